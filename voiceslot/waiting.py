"""Bounded waits and stops that never lose a cancellation.

Every background loop here (the allocator's dispatcher, the synth batch worker, the
watchers of voices and jobs) sleeps between rounds on "woken, or ``poll_s`` passed",
and is stopped by cancelling its task. On Python 3.11, ``asyncio.wait_for`` runs the
awaited coroutine as a task of its own; when that task finishes in the same turn of the
loop as the cancel arrives (a wake-up at the moment of a stop), ``wait_for`` returns its
result and drops the ``CancelledError``. The loop then runs on, its task marked
"cancelling" forever, and whoever awaits it to stop waits forever too: seen as the
synth worker tests hanging in ``stop()`` in three of fifteen runs on a loaded machine.

``asyncio.timeout`` (3.11+) awaits in the caller's own task and turns only its own
expiry into ``TimeoutError``, so an outside cancel always gets through. Everything that
waits with a bound uses it: as ``async with asyncio.timeout(...)`` around a block, as
``within`` where the bounded wait is an expression (a task's body), and through
``wait_at_most`` where only whether the wait ended in time matters.

The stopping side had the mirror image: ``task.cancel()`` then ``await task`` under
``suppress(CancelledError)`` also swallowed a cancel of the stopper itself.
``cancel_and_wait`` and ``finish_or_cancel`` are the two ways things are stopped here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Collection
from typing import Any, TypeVar

T = TypeVar("T")


async def within(timeout_s: float | None, awaitable: Awaitable[T]) -> T:
    """``awaitable``'s result, or ``TimeoutError`` once ``timeout_s`` seconds have passed
    (None: no bound): ``asyncio.wait_for`` without its lost cancellations."""
    async with asyncio.timeout(timeout_s):
        return await awaitable


async def wait_at_most(timeout_s: float | None, waiting: Awaitable[Any]) -> bool:
    """Await ``waiting`` (an ``Event.wait()``, a ``Condition.wait()``) for at most
    ``timeout_s`` seconds. True when it ended in time, False when the time ran out; a
    cancellation of the caller is raised, whenever it comes."""
    try:
        await within(timeout_s, waiting)
    except TimeoutError:
        return False
    return True


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and wait until every one has finished, however it ends: a task
    being stopped has nothing left to report, so its own error is not raised. A
    cancellation of the caller meanwhile is raised (``suppress(CancelledError)`` around
    ``await task`` swallowed it together with the task's own, and a stop that was itself
    being stopped ran on)."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit


async def finish_or_cancel(tasks: Collection[asyncio.Task[Any]], grace_s: float) -> None:
    """Let ``tasks`` (work in flight at a stop) finish for up to ``grace_s`` seconds,
    then cancel those still running and wait for them (``cancel_and_wait``)."""
    if tasks:
        await asyncio.wait(tasks, timeout=grace_s)
    await cancel_and_wait(*(task for task in tasks if not task.done()))
