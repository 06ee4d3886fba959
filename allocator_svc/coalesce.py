"""Sharing one run of an idempotent call among the callers that ask for it together."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class NextRun(Generic[K, T]):
    """Runs ``call(key)`` for callers that may share a run: a caller gets the result of a
    run that *started after it asked* (so it sees everything that happened before it
    asked), and while one run for a key is out, everyone asking meanwhile shares the next
    one. However many ask at once, at most two runs per key are out or waiting.

    For calls whose effect does not depend on how many ask (recording that a provider
    answered: one success is as good as many).
    """

    def __init__(self, call: Callable[[K], Awaitable[T]]) -> None:
        self._call = call
        self._running: dict[K, asyncio.Future[T]] = {}
        self._next: dict[K, asyncio.Future[T]] = {}

    async def __call__(self, key: K) -> T:
        if key not in self._running:
            return await asyncio.shield(self._start(key))
        if key not in self._next:
            self._next[key] = asyncio.get_running_loop().create_future()
        return await asyncio.shield(self._next[key])

    def _start(self, key: K) -> asyncio.Future[T]:
        task = asyncio.ensure_future(self._call(key))
        self._running[key] = task
        task.add_done_callback(lambda _: self._finished(key))
        return task

    def _finished(self, key: K) -> None:
        del self._running[key]
        waiting = self._next.pop(key, None)
        if waiting is None:
            return
        run = self._start(key)

        def relay(done: asyncio.Future[T]) -> None:
            if waiting.done():
                return
            if done.cancelled():
                waiting.cancel()
            elif (exc := done.exception()) is not None:
                waiting.set_exception(exc)
            else:
                waiting.set_result(done.result())

        run.add_done_callback(relay)
