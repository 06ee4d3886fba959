"""Loaded engine models, one per worker slot: lazy, thread-safe, and never a hang.

A model takes from a third of a second (the tiny test XTTS) to minutes (downloading XTTS v2
on first use) to load. Three rules follow:

- **Lazy and once.** Nothing loads until a slot's model is first wanted (or ``preload`` is
  asked for). However many threads want the same slot at once, one load runs and all of
  them get its result.
- **Loads run on their own thread.** A waiter (an engine worker, or ``wait_ready`` from the
  event loop) only ever waits on an event, with a deadline.
- **Waiters never hang.** A load gets ``load_timeout_s`` from the moment it started. A
  waiter still waiting then gets ``Transient("model load did not finish within N s")`` and
  the caller may retry later. The load itself keeps running (a thread cannot be killed);
  if it finishes, later callers use its model. While it runs, no second load of the same
  slot starts, so a stuck download cannot multiply itself.

A failed load is not remembered: the next caller starts a fresh attempt, so fixing the
cause (agreeing to a licence, mounting the model directory) needs no restart.

Each slot holds its own model object because one XTTS model cannot run two generations
at once (see ``pool``).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from voiceslot.providers.errors import Fatal, ProviderError, Transient

logger = logging.getLogger(__name__)

M = TypeVar("M")


@dataclass
class _Load(Generic[M]):
    """One attempt to load one slot's model."""

    slot: int
    started_at: float
    done: threading.Event = field(default_factory=threading.Event)
    model: M | None = None
    error: BaseException | None = None

    @property
    def failed(self) -> bool:
        return self.done.is_set() and self.error is not None


def load_error_for_waiter(error: BaseException, *, provider: str) -> ProviderError:
    """The exception one waiter raises for a failed load.

    Each waiter gets its own exception object: one instance raised on several threads at
    once would have its traceback rewritten under the others' feet. Provider errors keep
    their class (``Fatal`` for a refused licence stays ``Fatal``); anything else is ``Fatal``.
    """
    if isinstance(error, ProviderError):
        return copy.copy(error)
    return Fatal(f"model load failed: {type(error).__name__}: {error}", provider=provider)


class ModelCache(Generic[M]):
    """``slots`` lazily loaded models built by ``loader`` (called on a loader thread)."""

    def __init__(
        self,
        loader: Callable[[], M],
        *,
        slots: int,
        load_timeout_s: float,
        name: str = "local",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        if load_timeout_s <= 0:
            raise ValueError("load_timeout_s must be positive")
        self._loader = loader
        self.slots = slots
        self.load_timeout_s = load_timeout_s
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._loads: dict[int, _Load[M]] = {}
        self.loads_started = 0
        """Load attempts begun so far (for tests and metrics)."""

    def get(self, slot: int = 0) -> M:
        """The model of ``slot``, loading it if needed. Blocks the calling thread for at
        most what is left of the load's ``load_timeout_s``; call it from a worker thread
        (or through ``asyncio.to_thread``), never on the event loop."""
        load = self._ensure_loading(slot)
        remaining = load.started_at + self.load_timeout_s - self._clock()
        if not load.done.wait(max(0.0, remaining)):
            raise Transient(
                f"model load did not finish within {self.load_timeout_s:g} s", provider=self.name
            )
        if load.error is not None:
            raise load_error_for_waiter(load.error, provider=self.name) from load.error
        assert load.model is not None  # done without error means a model was set
        return load.model

    def preload(self) -> None:
        """Start loading every slot in the background; returns at once."""
        for slot in range(self.slots):
            self._ensure_loading(slot)

    async def wait_ready(self) -> None:
        """Load every slot (if not yet loaded) and wait for all of them, each within the
        load timeout. Raises what ``get`` raises."""
        await asyncio.gather(*(asyncio.to_thread(self.get, slot) for slot in range(self.slots)))

    def is_loaded(self, slot: int = 0) -> bool:
        with self._lock:
            load = self._loads.get(slot)
        return load is not None and load.done.is_set() and load.error is None

    def unload(self, slot: int | None = None) -> None:
        """Forget the model of ``slot`` (all slots when None); the next ``get`` reloads.
        A worker in the middle of a generation keeps its reference until it finishes; a
        load still running completes into nothing."""
        with self._lock:
            if slot is None:
                self._loads.clear()
            else:
                self._loads.pop(slot, None)

    def _ensure_loading(self, slot: int) -> _Load[M]:
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} is outside 0..{self.slots - 1}")
        with self._lock:
            load = self._loads.get(slot)
            if load is None or load.failed:
                load = _Load(slot=slot, started_at=self._clock())
                self._loads[slot] = load
                self.loads_started += 1
                thread = threading.Thread(
                    target=self._run_load,
                    args=(load,),
                    name=f"{self.name}-model-load-{slot}",
                    daemon=True,  # a stuck download must not keep the process alive
                )
                thread.start()
            return load

    def _run_load(self, load: _Load[M]) -> None:
        began = time.perf_counter()
        try:
            load.model = self._loader()
        except BaseException as exc:  # delivered to every waiter; never lost on this thread
            load.error = exc
            logger.warning("model load for slot %d of %s failed: %s", load.slot, self.name, exc)
        else:
            logger.info(
                "model for slot %d of %s loaded in %.2f s",
                load.slot,
                self.name,
                time.perf_counter() - began,
            )
        finally:
            load.done.set()
