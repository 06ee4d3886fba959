"""The engine worker pool with fake models: threads, ordering, backpressure, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

import pytest

from voiceslot.providers.errors import RateLimited, Transient
from voiceslot.providers.local.pool import EnginePool, retry_after_hint

WAIT_S = 10.0  # generous ceiling for a condition that should hold in milliseconds


class FakeModel:
    def __init__(self, slot: int) -> None:
        self.slot = slot


def make_pool(*, workers: int = 1, queue_size: int = 4) -> EnginePool[FakeModel]:
    models: dict[int, FakeModel] = {}
    lock = threading.Lock()

    def model_for(slot: int) -> FakeModel:
        with lock:
            return models.setdefault(slot, FakeModel(slot))

    return EnginePool(model_for, workers=workers, queue_size=queue_size, name="test")


async def wait_event(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, WAIT_S), "condition never came true"


async def test_run_returns_the_result_computed_on_a_worker_thread() -> None:
    pool = make_pool()
    name, slot = await pool.run(lambda model: (threading.current_thread().name, model.slot))
    assert name == "test-engine-0"
    assert name != threading.current_thread().name
    assert slot == 0
    await pool.aclose()


async def test_two_workers_run_at_the_same_time_each_on_its_own_model() -> None:
    pool = make_pool(workers=2)
    # Both jobs must be inside the barrier together: impossible if the pool serialized them.
    barrier = threading.Barrier(2, timeout=WAIT_S)

    def job(model: FakeModel) -> int:
        barrier.wait()
        return model.slot

    slots = await asyncio.gather(pool.run(job), pool.run(job))
    assert sorted(slots) == [0, 1]
    await pool.aclose()


async def test_one_worker_runs_jobs_one_after_another() -> None:
    pool = make_pool(workers=1)
    gate, first_started = threading.Event(), threading.Event()
    spans: dict[str, tuple[float, float]] = {}

    def job(name: str) -> object:
        def run(model: FakeModel) -> str:
            began = time.perf_counter()
            if name == "first":
                first_started.set()
                gate.wait(WAIT_S)
            spans[name] = (began, time.perf_counter())
            return name

        return run

    first = asyncio.ensure_future(pool.run(job("first")))
    await wait_event(first_started)
    second = asyncio.ensure_future(pool.run(job("second")))
    await asyncio.sleep(0)  # let the second request reach the queue
    assert pool.waiting == 1 and pool.busy == 1
    gate.set()
    assert await asyncio.gather(first, second) == ["first", "second"]
    assert spans["first"][1] <= spans["second"][0]
    await pool.aclose()


async def test_a_full_queue_tells_callers_to_back_off() -> None:
    pool = make_pool(workers=1, queue_size=1)
    gate, started = threading.Event(), threading.Event()

    def blocking(model: FakeModel) -> str:
        started.set()
        gate.wait(WAIT_S)
        return "done"

    running = asyncio.ensure_future(pool.run(blocking))
    await wait_event(started)
    queued = asyncio.ensure_future(pool.run(lambda model: "queued"))
    await asyncio.sleep(0)
    with pytest.raises(RateLimited) as refused:
        await pool.run(lambda model: "refused")
    assert refused.value.retryable
    assert "busy" in refused.value.message
    assert refused.value.retry_after is None  # no job had finished: nothing to estimate from
    gate.set()
    assert await asyncio.gather(running, queued) == ["done", "queued"]
    await pool.aclose()


async def test_stream_delivers_every_item_in_order() -> None:
    pool = make_pool()

    def job(model: FakeModel) -> Iterator[int]:
        yield from range(200)

    assert [item async for item in pool.stream(job)] == list(range(200))
    await pool.aclose()


async def test_stream_error_arrives_after_the_items_before_it() -> None:
    pool = make_pool()

    def job(model: FakeModel) -> Iterator[int]:
        yield 1
        yield 2
        raise KeyError("broken")

    received = []
    with pytest.raises(KeyError, match="broken"):
        async for item in pool.stream(job):
            received.append(item)
    assert received == [1, 2]
    await pool.aclose()


async def test_leaving_a_stream_stops_the_generation_and_frees_the_worker() -> None:
    pool = make_pool(workers=1)
    closed = threading.Event()

    def endless(model: FakeModel) -> Iterator[int]:
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()

    stream = pool.stream(endless)
    taken = []
    async for item in stream:
        taken.append(item)
        if len(taken) == 3:
            break
    await stream.aclose()
    assert taken == [0, 1, 2]
    await wait_event(closed)
    # The only worker is free again: a new job runs.
    assert await asyncio.wait_for(pool.run(lambda model: "next"), WAIT_S) == "next"
    await pool.aclose()


async def test_a_caller_that_gave_up_while_queued_is_skipped() -> None:
    pool = make_pool(workers=1)
    gate, started = threading.Event(), threading.Event()
    ran: list[str] = []

    def blocking(model: FakeModel) -> None:
        started.set()
        gate.wait(WAIT_S)

    running = asyncio.ensure_future(pool.run(blocking))
    await wait_event(started)
    abandoned = asyncio.ensure_future(pool.run(lambda model: ran.append("abandoned")))
    await asyncio.sleep(0)
    abandoned.cancel()
    # Let the cancellation land before the worker frees up: released first, the worker
    # thread could take the job before the loop had even told the pool it was given up.
    with contextlib.suppress(asyncio.CancelledError):
        await abandoned
    gate.set()
    await running
    # Jobs run in order, so had the abandoned one run, it would have run before this one.
    await pool.run(lambda model: ran.append("after"))
    assert ran == ["after"]
    await pool.aclose()


async def test_job_and_model_errors_reach_the_caller() -> None:
    pool = make_pool()

    def failing(model: FakeModel) -> None:
        raise ValueError("bad job")

    with pytest.raises(ValueError, match="bad job"):
        await pool.run(failing)

    def no_model(slot: int) -> FakeModel:
        raise Transient("model load did not finish within 1 s")

    broken = EnginePool(no_model, workers=1, queue_size=1, name="broken")
    with pytest.raises(Transient, match="did not finish"):
        await broken.run(lambda model: None)
    with pytest.raises(Transient, match="did not finish"):
        async for _ in broken.stream(lambda model: iter([1])):
            pass
    await pool.aclose()
    await broken.aclose()


async def test_close_fails_waiting_requests_then_refuses_new_ones() -> None:
    pool = make_pool(workers=1)
    gate, started = threading.Event(), threading.Event()

    def blocking(model: FakeModel) -> str:
        started.set()
        gate.wait(WAIT_S)
        return "finished"

    running = asyncio.ensure_future(pool.run(blocking))
    await wait_event(started)
    waiting = asyncio.ensure_future(pool.run(lambda model: "never"))
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(pool.aclose())
    with pytest.raises(Transient, match="shutting down"):
        await waiting
    gate.set()
    assert await running == "finished"  # work in progress completes
    await closing
    with pytest.raises(Transient, match="shut down"):
        await pool.run(lambda model: None)


async def test_close_ends_a_running_stream_instead_of_leaving_its_reader_waiting() -> None:
    pool = make_pool(workers=1)
    step = threading.Semaphore(0)

    def paced(model: FakeModel) -> Iterator[int]:
        n = 0
        while True:
            yield n
            step.acquire(timeout=WAIT_S)  # one step per item the test asks for
            n += 1

    stream = pool.stream(paced)
    assert await anext(stream) == 0
    closing = asyncio.ensure_future(pool.aclose())
    await asyncio.sleep(0)  # aclose has flagged the stream before the next step
    step.release()
    with pytest.raises(Transient, match="stopped this stream"):
        async for _ in stream:
            step.release()
    await closing


def test_retry_hint_spreads_the_mean_job_time_over_the_workers() -> None:
    assert retry_after_hint([], workers=2) is None
    assert retry_after_hint([2.0, 4.0], workers=2) == pytest.approx(1.5)
    assert retry_after_hint([0.001], workers=4) == pytest.approx(0.1)  # never a busy loop
