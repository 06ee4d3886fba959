"""Batches: concurrent callers' items sent as one call for many (group commit).

Every statement costs this process and the database a fixed overhead whatever it does;
under load, that overhead, not the work, is the limit. Callers submit items and wait;
batches go out as ``may_start_batch`` allows, each taking everything queued so far (up
to ``max_batch``). One caller alone still goes out at once, in a batch of one; under
load, batches grow by themselves. The allocator's lease grant and its completions both
run this way; what a batch does (its statement, its retries) is the caller's ``run``.

Hand-written: a queue, a future per caller and a bound on batches in flight, which is
less than a dependency would cost to learn and pin.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

STALL_FACTOR = 4.0
STALL_MIN_S = 0.02


def stall_after_s(typical_s: float) -> float:
    """How long a batch may be out before it counts as stuck."""
    return max(STALL_MIN_S, STALL_FACTOR * typical_s)


def may_start_batch(
    inflight: int, last_started_s: float, now_s: float, typical_s: float, *, cap: int
) -> bool:
    """Whether another batch may go now.

    One batch in flight is the rule: callers gather meanwhile, so under load batches
    grow, and a batch of 16 costs this process and the database hardly more than one.
    But the one out may be stuck (behind a row lock a reclaim holds, a database stall),
    and every caller would wait for it: once the latest batch has been out four times as
    long as batches typically take (and at least 20 ms), another may go, up to ``cap``
    in flight."""
    if inflight == 0:
        return True
    if inflight >= cap:
        return False
    return now_s - last_started_s >= stall_after_s(typical_s)


class Batches(Generic[T, R]):
    """Items submitted concurrently, run in batches by ``run`` (one result per item, in
    the batch's order). A batch that fails fails each of its callers."""

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int,
        max_inflight: int = 1,
    ) -> None:
        """``max_inflight``: 1 for strictly one batch at a time; more lets a batch go
        beside one that is stuck (``may_start_batch``)."""
        self._run = run
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._inflight = 0
        self._scheduled = False
        self._recheck: asyncio.TimerHandle | None = None
        self._last_started_s = 0.0
        self._typical_s = STALL_MIN_S / STALL_FACTOR
        """A moving average of how long batches take."""
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future))
        if not self._scheduled:
            # Start on the next turn of the loop, so that callers arriving in this one
            # share the batch.
            self._scheduled = True
            loop.call_soon(self._start)
        return await future

    def close(self) -> None:
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None

    def _start(self) -> None:
        self._scheduled = False
        loop = asyncio.get_running_loop()
        while self._queue and may_start_batch(
            self._inflight,
            self._last_started_s,
            loop.time(),
            self._typical_s,
            cap=self._max_inflight,
        ):
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            self._inflight += 1
            self._last_started_s = loop.time()
            task = loop.create_task(self._flush(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._queue and self._inflight < self._max_inflight and self._recheck is None:
            # Callers are waiting on a batch still out: look again when it would count
            # as stuck (a batch finishing first looks again by itself).
            self._recheck = loop.call_later(
                self._last_started_s + stall_after_s(self._typical_s) - loop.time(),
                self._rechecked,
            )

    def _rechecked(self) -> None:
        self._recheck = None
        self._start()

    async def _flush(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            results = await self._run([item for item, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            self._typical_s += 0.1 * (loop.time() - began - self._typical_s)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():  # else the caller went away meanwhile
                    future.set_result(result)
        finally:
            self._inflight -= 1
            self._start()
