"""Bounded waits and stops (``voiceslot.waiting``): a stop that arrives as the loop is
woken is never lost, which ``asyncio.wait_for`` on Python 3.11 does lose, and a stop
that is itself cancelled is cancelled."""

from __future__ import annotations

import asyncio

import pytest

from voiceslot.waiting import cancel_and_wait, finish_or_cancel, wait_at_most, within

DEADLINE_S = 10.0  # a loaded 2-core machine; the waits below end at once when correct


async def test_a_cancel_arriving_as_the_event_is_set_stops_the_loop() -> None:
    """The shape of every background loop here: wait for a wake-up or the poll interval,
    then go round again; stopped by cancelling its task. Setting the event and cancelling
    in the same turn of the loop is the race ``wait_for`` lost (its inner task finished
    first, and it returned instead of raising)."""
    woken = asyncio.Event()
    rounds = 0

    async def background_loop() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            woken.clear()
            await wait_at_most(30.0, woken.wait())

    task = asyncio.create_task(background_loop())
    for _ in range(3):
        await asyncio.sleep(0)  # its first round runs and parks in the wait
    assert rounds == 1
    woken.set()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=DEADLINE_S)
    assert task in done, "the loop went on after it was cancelled"
    assert task.cancelled()
    assert rounds == 1


async def test_wait_at_most_says_whether_the_wait_ended_in_time() -> None:
    event = asyncio.Event()
    assert not await wait_at_most(0.01, event.wait())
    event.set()
    assert await wait_at_most(0.01, event.wait())
    assert await wait_at_most(None, event.wait())


async def test_within_returns_the_value_or_times_out() -> None:
    async def answer(after_s: float) -> int:
        await asyncio.sleep(after_s)
        return 42

    assert await within(DEADLINE_S, answer(0)) == 42
    with pytest.raises(TimeoutError):
        await within(0.01, answer(DEADLINE_S))


async def test_a_cancel_during_within_is_raised_not_turned_into_a_timeout() -> None:
    started = asyncio.Event()

    async def waits() -> None:
        started.set()
        await within(DEADLINE_S, asyncio.Event().wait())

    task = asyncio.create_task(waits())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancel_and_wait_waits_for_every_task_whatever_it_ends_with() -> None:
    async def fails_when_cancelled() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("cleaning up went wrong") from None

    async def finished() -> int:
        return 1

    quiet = asyncio.create_task(asyncio.Event().wait())
    loud = asyncio.create_task(fails_when_cancelled())
    done = asyncio.create_task(finished())
    await asyncio.sleep(0)
    await cancel_and_wait(quiet, loud, done)
    assert quiet.cancelled() and loud.done() and not loud.cancelled() and done.result() == 1


async def test_a_stop_that_is_itself_cancelled_is_cancelled() -> None:
    """The caller of ``cancel_and_wait`` is cancelled while the task it stops is still
    finishing: the caller's cancellation is raised, not swallowed with the task's."""
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await release.wait()  # cleanup that takes a while

    task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(0)
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(stopper, DEADLINE_S)
    assert not task.done()
    release.set()
    await asyncio.wait({task}, timeout=DEADLINE_S)
    assert task.cancelled()


async def test_finish_or_cancel_lets_quick_work_finish_and_cancels_the_rest() -> None:
    async def takes(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    quick = asyncio.create_task(takes(0))
    stuck = asyncio.create_task(takes(3600))
    await finish_or_cancel([quick, stuck], grace_s=0.5)
    assert quick.result() == 0
    assert stuck.cancelled()
    await finish_or_cancel([], grace_s=0.5)  # nothing in flight: nothing to wait for
