"""HTTP plumbing shared by the two emulated APIs: acting on fault decisions, dropping a
response on purpose, and small response helpers. The decisions themselves are made in
``faults`` and ``state``; this module only carries them out on the wire."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from voiceslot.testing.emulator.faults import Decision, FaultKind, Op
from voiceslot.testing.emulator.state import Account, EmulatorError, EmulatorState, RequestRecord

RECORDED_HEADERS = ("content-type", "cartesia-version", "accept")


class ResponseDropped(Exception):
    """Raised after a partial response so the server closes the connection: the client
    sees a broken response although the work was done."""


def format_retry_after(seconds: float) -> str:
    """``Retry-After`` value: integer seconds as RFC 9110 says, decimals when a test asks
    for sub-second delays (our adapters accept both)."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def new_request_id() -> str:
    return uuid.uuid4().hex


def recorded_headers(request: Request) -> dict[str, str]:
    return {h: request.headers[h] for h in RECORDED_HEADERS if h in request.headers}


async def wait_closed_or(state: EmulatorState, seconds: float) -> None:
    """Sleep ``seconds`` unless the emulator shuts down first (no polling: a worker
    thread waits on the closing event)."""
    if seconds > 0:
        await asyncio.to_thread(state.closed.wait, seconds)


async def apply_pre_faults(state: EmulatorState, decision: Decision) -> None:
    """Faults that act before the work: scripted 5xx/429 answers and hangs."""
    fault = decision.fault
    if fault is None:
        return
    if fault.kind == FaultKind.SERVER_ERROR:
        raise EmulatorError(fault.status, "server_error", "Internal server error (scripted fault).")
    if fault.kind == FaultKind.RATE_LIMITED:
        raise EmulatorError(
            429,
            "system_busy",
            "Our services are experiencing high levels of traffic; please try again later.",
            retry_after=fault.retry_after,
        )
    if fault.kind == FaultKind.HANG:
        await wait_closed_or(state, fault.hang_s)


def loses_response(decision: Decision) -> bool:
    return decision.fault is not None and decision.fault.kind == FaultKind.LOST_RESPONSE


def fail_after_work(decision: Decision) -> None:
    """``ERROR_AFTER_WORK``: the work is done; now answer as if it failed (a 5xx)."""
    fault = decision.fault
    if fault is not None and fault.kind == FaultKind.ERROR_AFTER_WORK:
        raise EmulatorError(
            fault.status, "server_error", "Internal server error (scripted, after the work)."
        )


def breaks_stream(decision: Decision) -> bool:
    return decision.fault is not None and decision.fault.kind == FaultKind.STREAM_BREAK


async def begin_request(
    state: EmulatorState,
    provider: str,
    request: Request,
    op: Op,
    *,
    credential: Callable[[], str | None],
    check: Callable[[], None] | None = None,
    json_body: Any = None,
    form: dict[str, str] | None = None,
) -> tuple[Decision, Account]:
    """What every emulated endpoint does first, in the real services' order: record the
    request, decide its faults and apply those that strike before any work, run the
    provider's own header ``check``, authenticate, and take the scripted latency (speech
    requests take theirs later, while holding a concurrency slot)."""
    record = RequestRecord(
        provider=provider,
        op=op,
        method=request.method,
        path=request.url.path,
        query=dict(request.query_params),
        headers=recorded_headers(request),
        json=json_body,
        form=form or {},
    )
    epoch = state.epoch
    decision = state.begin(provider, op, record)
    await apply_pre_faults(state, decision)
    if check is not None:
        check()
    account = state.authenticate(provider, credential(), epoch=epoch)
    if decision.latency_s > 0 and op not in (Op.TTS, Op.TTS_STREAM):
        await asyncio.sleep(decision.latency_s)
    return decision, account


class DroppedResponse(Response):
    """Starts a response, sends a few bytes of it, then breaks the connection."""

    def __init__(self, media_type: str = "application/json") -> None:
        super().__init__(content=b"", media_type=media_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", (self.media_type or "").encode()),
                    (b"content-length", b"4096"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b'{"', "more_body": True})
        raise ResponseDropped("scripted fault: response lost after the work was done")


class Finally(Response):
    """Wraps a response and runs ``on_done`` however it ends, even if it never started
    (a client gone before a stream's first byte must still free its concurrency slot)."""

    def __init__(self, inner: Response, on_done: Callable[[], None]) -> None:
        self._inner = inner
        self._on_done = on_done
        self.status_code = inner.status_code
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._inner(scope, receive, send)
        finally:
            self._on_done()


def extra_headers(error: EmulatorError, request_id: str) -> dict[str, str]:
    headers = {"request-id": request_id}
    if error.retry_after is not None:
        headers["retry-after"] = format_retry_after(error.retry_after)
    return headers


class _DroppedFilter(logging.Filter):
    """Hides uvicorn's traceback for connections we break on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, ResponseDropped):
                return False
            exc = exc.__cause__ or exc.__context__ or _group_member(exc)
        return True


def _group_member(exc: BaseException) -> BaseException | None:
    # StreamingResponse runs in a task group, which wraps our exception in a group.
    members = getattr(exc, "exceptions", None)
    return members[0] if members else None


_FILTER = _DroppedFilter()


def quiet_dropped_responses() -> None:
    logger = logging.getLogger("uvicorn.error")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


def json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
