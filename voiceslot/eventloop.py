"""The event loop the servers run on.

uvloop (libuv under asyncio's interface) where it is installed: measured on
EnsureActiveVoice's hot path, the allocator process spends about 7 % less CPU per call
on it than on asyncio's own loop (``bench/README.md``). grpc.aio and asyncpg both run
on any asyncio loop; asyncpg was written with uvloop in mind. ``event_loop: asyncio``
in the settings keeps the standard loop (for a platform or a tool that needs it).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")

EventLoopChoice = Literal["auto", "uvloop", "asyncio"]


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def loop_factory(choice: EventLoopChoice) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for ``choice`` (None: asyncio's default loop). ``auto`` is uvloop when
    installed; asking for ``uvloop`` where it is not fails with a clear error."""
    if choice == "asyncio" or (choice == "auto" and not uvloop_installed()):
        return None
    try:
        import uvloop
    except ImportError as exc:
        raise RuntimeError(
            "event_loop is 'uvloop' but uvloop is not installed here; use 'auto' or 'asyncio'"
        ) from exc
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], *, choice: EventLoopChoice = "auto") -> T:
    """``asyncio.run(main)`` on the loop ``choice`` names."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)
