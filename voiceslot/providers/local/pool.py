"""The engine worker pool: the local provider's slots of concurrent generation.

One XTTS model object cannot run two generations at once (each request's prompt is stored
on the model; concurrent requests overwrite each other). So the pool runs ``workers``
threads, each owning one model (its *slot* in the ``ModelCache``), and every generation
runs on its worker's thread:

- the asyncio event loop never blocks on a generation;
- a model only ever serves one generation at a time, so outputs cannot mix;
- requests beyond the workers wait in a bounded queue (``queue_size``); when it is full
  the caller is told to back off (``RateLimited``, with a hint from recent job times)
  instead of piling up unbounded work.

Results travel back with ``loop.call_soon_threadsafe``: a unary job settles an asyncio
future; a streaming job feeds an ``asyncio.Queue`` item by item, in the order the model
produced them. A consumer that stops reading (breaks, is cancelled, disconnects) sets the
task's cancel flag: the worker stops handing chunks back and moves on after the current
generation step, closing the generator so the model's state is released. A caller that
gives up while its request is still queued is skipped when a worker reaches it.

Streamed items are buffered for the consumer without a bound: a sentence's chunks are a
few hundred kilobytes at most, and blocking the worker on a slow reader would hold a
model hostage to a network client.

The pool knows nothing about TTS: a job is any callable taking the worker's model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from voiceslot.providers.errors import RateLimited, Transient

logger = logging.getLogger(__name__)

M = TypeVar("M")
T = TypeVar("T")

_ITEM, _END, _ERROR = "item", "end", "error"


def retry_after_hint(recent_job_s: Sequence[float], *, workers: int) -> float | None:
    """Seconds until a queue place is likely to free: one job's mean duration spread over
    the workers. None before any job has finished (nothing to estimate from)."""
    if not recent_job_s:
        return None
    mean = sum(recent_job_s) / len(recent_job_s)
    return max(0.1, round(mean / workers, 2))


def _deliverable(error: BaseException) -> BaseException:
    """An asyncio future refuses StopIteration, and BaseExceptions such as SystemExit
    must not escape into the caller's loop as if the caller raised them."""
    if isinstance(error, StopIteration) or not isinstance(error, Exception):
        wrapped = RuntimeError(f"engine job raised {type(error).__name__}: {error}")
        wrapped.__cause__ = error
        return wrapped
    return error


def _post(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    """Hand a result to the caller's loop; a loop that has closed has nobody to tell."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class _Task(ABC):
    """A request on its way to a worker."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.cancelled = threading.Event()

    @abstractmethod
    def execute(self, model: Any) -> None:
        """Run on the worker's thread with the worker's own model."""

    @abstractmethod
    def fail(self, error: BaseException) -> None:
        """Deliver ``error`` to the waiting caller."""


class _UnaryTask(_Task):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        job: Callable[[Any], Any],
        future: asyncio.Future[Any],
    ) -> None:
        super().__init__(loop)
        self.job = job
        self.future = future

    def execute(self, model: Any) -> None:
        try:
            value = self.job(model)
        except BaseException as exc:  # every outcome reaches the caller, who awaits it
            self.fail(exc)
        else:
            _post(self.loop, _settle, self.future, value, None)

    def fail(self, error: BaseException) -> None:
        _post(self.loop, _settle, self.future, None, _deliverable(error))


class _StreamTask(_Task):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        job: Callable[[Any], Iterator[Any]],
        items: asyncio.Queue[tuple[str, Any]],
    ) -> None:
        super().__init__(loop)
        self.job = job
        self.items = items

    def _send(self, kind: str, value: Any) -> None:
        _post(self.loop, self.items.put_nowait, (kind, value))

    def execute(self, model: Any) -> None:
        iterator: Iterator[Any] | None = None
        try:
            iterator = self.job(model)
            # One next() is one generation step: the cancel flag is checked between steps,
            # so a consumer that left frees the worker after the step in progress.
            while not self.cancelled.is_set():
                try:
                    item = next(iterator)
                except StopIteration:
                    self._send(_END, None)
                    return
                if not self.cancelled.is_set():
                    self._send(_ITEM, item)
            # Stopped early. If the consumer left, nobody reads this; if the pool is
            # closing, it ends a consumer that would otherwise wait forever.
            self.fail(Transient("the local engine stopped this stream"))
        except BaseException as exc:  # delivered in order, after the items already sent
            self.fail(exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # closing must never take the worker down
                    logger.exception("closing an engine stream failed")

    def fail(self, error: BaseException) -> None:
        self._send(_ERROR, _deliverable(error))


class EnginePool(Generic[M]):
    """``workers`` threads, worker ``i`` running every job on ``model_for(i)``."""

    def __init__(
        self,
        model_for: Callable[[int], M],
        *,
        workers: int,
        queue_size: int,
        name: str = "local",
    ) -> None:
        if workers < 1 or queue_size < 1:
            raise ValueError("workers and queue_size must be at least 1")
        self._model_for = model_for
        self.workers = workers
        self.queue_size = queue_size
        self.name = name
        # Unbounded underneath; the bound is enforced at admission, under a lock, so that
        # shutdown sentinels can always be queued.
        self._queue: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._admission = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._running: dict[int, _Task] = {}
        self._recent_job_s: deque[float] = deque(maxlen=32)
        self._closed = False

    @property
    def waiting(self) -> int:
        """Requests queued for a worker (cancelled ones included until a worker drops them)."""
        return self._queue.qsize()

    @property
    def busy(self) -> int:
        """Workers running a job now."""
        return len(self._running)

    async def run(self, job: Callable[[M], T]) -> T:
        """Run ``job(model)`` on a worker and return its result (or raise its error)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        task = _UnaryTask(loop, job, future)
        self._submit(task)
        try:
            return await future
        finally:
            task.cancelled.set()  # gave up while queued: the worker skips it

    async def stream(self, job: Callable[[M], Iterator[T]]) -> AsyncIterator[T]:
        """Items of ``job(model)``, produced on a worker, in order. The request is queued
        when iteration starts; leaving the iteration early cancels it."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        task = _StreamTask(loop, job, items)
        self._submit(task)
        try:
            while True:
                kind, value = await items.get()
                if kind == _ITEM:
                    yield value
                elif kind == _END:
                    return
                else:
                    raise value
        finally:
            task.cancelled.set()

    async def aclose(self, *, timeout_s: float = 30.0) -> None:
        """Refuse new work, fail what is still queued, stop streams after their current
        step, and wait up to ``timeout_s`` for the workers to finish."""
        with self._admission:
            if self._closed:
                return
            self._closed = True
            while True:
                try:
                    task = self._queue.get_nowait()
                except queue.Empty:
                    break
                if task is not None:
                    task.cancelled.set()
                    task.fail(Transient("the local engine is shutting down", provider=self.name))
            for task in list(self._running.values()):
                if isinstance(task, _StreamTask):
                    task.cancelled.set()
            for _ in self._threads:
                self._queue.put(None)
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            await asyncio.to_thread(thread.join, max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                logger.warning("engine worker %s still busy after %.1f s", thread.name, timeout_s)

    def _submit(self, task: _Task) -> None:
        with self._admission:
            if self._closed:
                raise Transient("the local engine is shut down", provider=self.name)
            if self._queue.qsize() >= self.queue_size:
                raise RateLimited(
                    f"the local engine is busy: {self.queue_size} requests already wait for "
                    f"{self.workers} worker(s)",
                    provider=self.name,
                    retry_after=retry_after_hint(self._recent_job_s, workers=self.workers),
                )
            self._start_workers()
            self._queue.put(task)

    def _start_workers(self) -> None:
        # Threads start on first use, so constructing a provider costs nothing.
        if self._threads:
            return
        for slot in range(self.workers):
            thread = threading.Thread(
                target=self._work,
                args=(slot,),
                name=f"{self.name}-engine-{slot}",
                daemon=True,  # a generation stuck in native code must not block exit
            )
            thread.start()
            self._threads.append(thread)

    def _work(self, slot: int) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            if task.cancelled.is_set():
                continue
            try:
                model = self._model_for(slot)
            except BaseException as exc:  # e.g. the load timed out: the caller learns why
                task.fail(exc)
                continue
            self._running[slot] = task
            began = time.perf_counter()
            try:
                task.execute(model)
            finally:
                self._running.pop(slot, None)
                self._recent_job_s.append(time.perf_counter() - began)
