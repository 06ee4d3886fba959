"""The model cache: lazy, once per slot, thread-safe, bounded waits, retry after failure."""

from __future__ import annotations

import threading

import pytest

from voiceslot.providers.errors import Fatal, Transient
from voiceslot.providers.local.model_cache import ModelCache

WAIT_S = 10.0


class Clock:
    """A hand-moved monotonic clock: deadlines pass when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CountingLoader:
    def __init__(self, *, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.entered = threading.Event()
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> object:
        with self._lock:
            self.calls += 1
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT_S)
        return object()


def test_nothing_loads_until_asked_and_concurrent_callers_share_one_load() -> None:
    gate = threading.Event()
    loader = CountingLoader(gate=gate)
    cache = ModelCache(loader, slots=1, load_timeout_s=WAIT_S)
    assert loader.calls == 0 and cache.loads_started == 0

    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(0))) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert loader.entered.wait(WAIT_S)
    gate.set()
    for thread in threads:
        thread.join(WAIT_S)
    assert len(results) == 8
    assert all(model is results[0] for model in results)
    assert loader.calls == 1
    assert cache.get(0) is results[0]


def test_each_slot_gets_its_own_model() -> None:
    loader = CountingLoader()
    cache = ModelCache(loader, slots=2, load_timeout_s=WAIT_S)
    assert cache.get(0) is not cache.get(1)
    assert loader.calls == 2
    with pytest.raises(ValueError):
        cache.get(2)


def test_a_load_past_its_timeout_fails_waiters_clearly_and_later_callers_use_its_model() -> None:
    clock, gate = Clock(), threading.Event()
    loader = CountingLoader(gate=gate)
    cache = ModelCache(loader, slots=1, load_timeout_s=5.0, name="local", clock=clock)

    cache.preload()  # the load starts at 0 ...
    clock.now = 6.0  # ... so by now its deadline has passed
    with pytest.raises(Transient) as late:
        cache.get(0)
    assert late.value.message == "model load did not finish within 5 s"
    assert late.value.retryable and late.value.provider == "local"
    with pytest.raises(Transient):
        cache.get(0)
    assert cache.loads_started == 1  # a stuck load is not multiplied

    gate.set()
    clock.now = 0.0  # back before the deadline: wait (up to 5 s) for the finishing load
    model = cache.get(0)
    assert cache.is_loaded(0)
    clock.now = 100.0  # a finished load serves at any time
    assert cache.get(0) is model
    assert loader.calls == 1


def test_a_failed_load_reaches_every_waiter_and_the_next_call_tries_again() -> None:
    outcomes: list[object] = [Fatal("refusing to download: agree to the licence"), object()]

    def loader() -> object:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    cache = ModelCache(loader, slots=1, load_timeout_s=WAIT_S)
    with pytest.raises(Fatal, match="agree to the licence"):
        cache.get(0)
    assert not cache.is_loaded(0)
    model = cache.get(0)
    assert cache.get(0) is model
    assert cache.loads_started == 2


def test_an_unexpected_load_error_becomes_fatal() -> None:
    def loader() -> object:
        raise FileNotFoundError("model.pth")

    cache = ModelCache(loader, slots=1, load_timeout_s=WAIT_S, name="local")
    with pytest.raises(Fatal, match="FileNotFoundError: model.pth") as failed:
        cache.get(0)
    assert isinstance(failed.value.__cause__, FileNotFoundError)


def test_unload_makes_the_next_call_load_again() -> None:
    loader = CountingLoader()
    cache = ModelCache(loader, slots=1, load_timeout_s=WAIT_S)
    first = cache.get(0)
    cache.unload()
    assert not cache.is_loaded(0)
    assert cache.get(0) is not first
    assert loader.calls == 2


def test_preload_starts_every_slot_in_the_background() -> None:
    all_started = threading.Event()
    calls: list[int] = []
    lock = threading.Lock()

    def loader() -> object:
        with lock:
            calls.append(1)
            if len(calls) == 3:
                all_started.set()
        return object()

    cache = ModelCache(loader, slots=3, load_timeout_s=WAIT_S)
    cache.preload()
    assert all_started.wait(WAIT_S)
    for slot in range(3):
        cache.get(slot)
    assert cache.loads_started == 3


async def test_wait_ready_loads_all_slots_without_blocking_the_loop() -> None:
    loader = CountingLoader()
    cache = ModelCache(loader, slots=2, load_timeout_s=WAIT_S)
    await cache.wait_ready()
    assert cache.is_loaded(0) and cache.is_loaded(1)
    assert loader.calls == 2
