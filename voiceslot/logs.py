"""Structured logs: one JSON object per line, carrying the request's context.

``bind_call`` makes request id, user and voice the current task's call; every log line
in that task carries them, so a handler never threads them through by hand.
``bound_context`` adds fields for the lines of one block.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, NamedTuple

import structlog

_configured = False


class _Call(NamedTuple):
    request_id: str
    user: str | None
    voice: str | None


_call: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("log_call", default=None)


def bind_call(request_id: str, *, user: str | None = None, voice: str | None = None) -> None:
    """Make this the current task's call for every log line the task writes (each RPC
    runs in its own task, so it lasts exactly as long as the call). One contextvar set
    per call; the fields are made only when a line is written (``_merge_call``):
    binding them as structlog context cost every call, logged or not, as much as the
    rest of its admission."""
    _call.set(_Call(request_id, user or None, voice or None))


def _merge_call(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: the current call's fields, where the line has none of
    its own."""
    call = _call.get()
    if call is not None:
        event.setdefault("request_id", call.request_id)
        if call.user is not None:
            event.setdefault("user", call.user)
        if call.voice is not None:
            event.setdefault("voice", call.voice)
    return event


def configure_logging(*, level: str = "INFO", fmt: str = "json") -> None:
    """Route stdlib logging and structlog through one JSON (or console) renderer."""
    global _configured
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _merge_call,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that are chatty at INFO.
    for noisy in ("httpx", "botocore", "urllib3", "aiosqlite", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _configured = True


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)


@contextmanager
def bound_context(**values: Any) -> Iterator[None]:
    """Add ``values`` (None ones skipped) to every log line inside the block."""
    present = {k: v for k, v in values.items() if v not in (None, "")}
    with structlog.contextvars.bound_contextvars(**present):
        yield
