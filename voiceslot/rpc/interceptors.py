"""One server interceptor that wraps every handler with the cross-cutting concerns, in
this order: request id → authentication → admin check → rate limit → logging, metrics
and error mapping; while tracing is on, a SERVER span (child of the caller's
``traceparent``) covers it all and is current for the handler.

grpc.aio interceptors only see the method name and metadata before the call; to bind
log context for the handler's whole run and to map its exceptions, each RpcMethodHandler
is rebuilt around a wrapped behaviour. Request deserializers are wrapped too: protobuf
raises on malformed bytes (invalid UTF-8 in a string field, say) before any handler runs,
which gRPC would answer with INTERNAL; we answer INVALID_ARGUMENT instead.
"""

from __future__ import annotations

import asyncio
import contextvars
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from voiceslot import errors, telemetry
from voiceslot.auth import KeyTable, Principal
from voiceslot.logs import bind_call, get_logger
from voiceslot.rpc.status import grpc_code, to_rpc_status
from voiceslot.token_bucket import Bucket, TokenBucket
from voiceslot.waiting import wait_at_most

log = get_logger("voiceslot.rpc")

PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
ADMIN_METHODS = frozenset(
    f"/voiceslot.v1.AllocatorService/{m}"
    for m in (
        "ListSlots",
        "ListProviders",
        "ReclaimSlot",
        "ResetStuckAllocation",
        "SetVoicePinned",
        "RunMaintenance",
    )
)

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "principal", default=None
)
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
_credential: contextvars.ContextVar[str] = contextvars.ContextVar("credential", default="")


def current_principal() -> Principal:
    principal = _principal.get()
    if principal is None:  # only public methods run without one, and they never ask
        raise errors.Unauthenticated("no credentials")
    return principal


def current_credential() -> str:
    """The caller's own credential, so a service can call another on the caller's behalf."""
    return _credential.get()


@dataclass(frozen=True)
class _Malformed:
    """Stands in for a request whose bytes did not parse."""

    error: str


def _safe_deserializer(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except (DecodeError, UnicodeDecodeError, ValueError) as exc:
            return _Malformed(str(exc) or type(exc).__name__)

    return parse


def _check_request(request: Any) -> Any:
    if isinstance(request, _Malformed):
        raise errors.InvalidArgument(
            "request", f"malformed message (is every string valid UTF-8?): {request.error}"
        )
    return request


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _check_request(request)


def credential_from(metadata: Iterable[tuple[str, Any]]) -> str | None:
    for key, value in metadata:
        if key == "x-api-key" and value:
            return str(value)
        if (
            key == "authorization"
            and isinstance(value, str)
            and value.lower().startswith("bearer ")
        ):
            return value[7:].strip()
    return None


def request_id_from(metadata: Iterable[tuple[str, Any]]) -> tuple[str, bool]:
    """The call's request id, and whether the caller sent ``x-request-id`` at all. A sent
    value is kept when it is a printable id of 1–128 characters, else replaced by a
    fresh one, as is a missing one."""
    for key, value in metadata:
        if key == "x-request-id":
            if isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable():
                return value, True
            return secrets.token_hex(16), True
    return secrets.token_hex(16), False


class Admission:
    """Who may call, and how often: the key table and the per-caller token buckets. One
    per process, shared by every front door (this interceptor, the OpenAI-compatible
    HTTP API), so a caller has one rate budget whichever protocol it speaks."""

    def __init__(self, *, keys: KeyTable, rate_per_second: float, burst: int) -> None:
        self._keys = keys
        # Per-caller buckets in this process, keyed by user (callers are the configured
        # keys, so the dict stays small). Not the `limits` library: its memory storage
        # schedules an expiry timer on every hit, which measured ~57 µs per call — more
        # than the rest of this interceptor together — on the hot path of every RPC.
        self._bucket = TokenBucket(rate_per_s=rate_per_second, burst=burst)
        self._buckets: dict[str, Bucket] = {}

    def authenticate(self, credential: str | None) -> Principal:
        """The caller behind ``credential``; ``Unauthenticated`` when there is none or
        it is not a known key."""
        if credential is None:
            raise errors.Unauthenticated(
                "missing credentials: send 'authorization: Bearer <key>' or 'x-api-key'"
            )
        principal = self._keys.resolve(credential)
        if principal is None:
            raise errors.Unauthenticated("unknown credentials")
        return principal

    def take_token(self, user: str) -> None:
        """Spend one of ``user``'s calls; ``QuotaExceeded`` (with when to retry) when the
        bucket is empty."""
        now = datetime.now(UTC)
        bucket = self._buckets.get(user, Bucket(self._bucket.burst, None))
        if self._bucket.available(bucket, now) < 1:
            raise errors.QuotaExceeded(
                "rate limit exceeded",
                violations=(
                    errors.QuotaViolation(
                        f"user:{user}",
                        f"{self._bucket.rate_per_s:g} calls/s, bursts of {self._bucket.burst:g}",
                    ),
                ),
                retry_after=self._bucket.wait_s(bucket, now),
            )
        self._buckets[user] = self._bucket.spend(bucket, 1, now)


def bind_caller(
    principal: Principal, credential: str, request_id: str, *, voice: str | None = None
) -> None:
    """Make ``principal`` the current task's caller (``current_principal``,
    ``current_credential``, the log context, with the ``voice`` asked about if any):
    what every admitted call runs under."""
    _request_id.set(request_id)
    _principal.set(principal)
    _credential.set(credential)
    bind_call(request_id, user=principal.user, voice=voice)


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        *,
        keys: KeyTable,
        rate_per_second: float,
        burst: int,
        admission: Admission | None = None,
    ) -> None:
        self.admission = admission or Admission(
            keys=keys, rate_per_second=rate_per_second, burst=burst
        )
        self.draining = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def drain(self, timeout: float) -> bool:
        """Refuse new calls with UNAVAILABLE (retryable, unlike the CANCELLED that gRPC
        core gives calls arriving during its own shutdown) and wait up to ``timeout`` for
        the calls in flight to finish. True when none is left."""
        self.draining = True
        return await wait_at_most(timeout, self._idle.wait())

    def _enter(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def _exit(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        # The wrapped handler is built once per method (it is the same for every call;
        # building closures and a handler per call cost as much as the rest of this
        # interceptor). What differs per call comes from the call's own context.
        cached = self._wrapped.get(details.method)
        if cached is None or cached[0] is not handler:
            cached = (handler, self._wrap(details.method, handler))
            self._wrapped[details.method] = cached
        return cached[1]

    def _admit(self, method: str, metadata: Iterable[tuple[str, Any]], voice: str | None) -> bool:
        """Authenticate and authorize the call, take a rate-limit token, and set the
        call's context (request id, principal, credential, log context). Each call runs
        in its own task, so what is set here lives exactly as long as the call. True
        when the caller sent a request id, which its answer then carries back."""
        request_id, sent = request_id_from(metadata)
        _request_id.set(request_id)
        if method.startswith(PUBLIC_PREFIXES):
            bind_call(request_id)
            return sent
        if self.draining:
            raise errors.Unavailable("server is shutting down; retry", retry_after=1.0)
        credential = credential_from(metadata)
        principal = self.admission.authenticate(credential)
        assert credential is not None  # authenticate refused a missing one
        if method in ADMIN_METHODS and not principal.is_admin:
            raise errors.PermissionDenied(f"{method.rsplit('/', 1)[-1]} is admin only")
        self.admission.take_token(principal.user)
        bind_caller(principal, credential, request_id, voice=voice)
        return sent

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        handler_factory, behaviour, streaming_request, streaming_response = _shape(handler)
        calls_ok = telemetry.RPCS.labels(method, "OK")
        seconds = telemetry.RPC_SECONDS.labels(method)
        tracing = telemetry.TRACING  # while off, one attribute read per call: no span work

        def begin(request: Any, context: grpc.aio.ServicerContext) -> Any:
            """Admit the call and return the checked request."""
            metadata = context.invocation_metadata() or ()
            # The voice asked about goes into the log context (a malformed request has
            # none; it is refused below, after admission).
            if self._admit(method, metadata, getattr(request, "voice_id", None)):
                # Echoed to a caller who sent one (kept, or replaced when malformed);
                # every error carries it anyway (``fail``). Not on every answer: a
                # header per answer cost the server and the client each ~15 µs per
                # call, a tenth of a bare echo, for an id the caller never asked for
                # and that no log line of a successful call is written under.
                # Trailing, not initial, metadata: sending initial metadata explicitly
                # costs a separate write per call.
                context.set_trailing_metadata((("x-request-id", _request_id.get()),))
            if streaming_request:
                return _checked_stream(request)
            return _check_request(request)

        async def fail(context: grpc.aio.ServicerContext, exc: Exception, started: float) -> None:
            code = grpc_code(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("unhandled error", method=method)
            else:
                log.info("rpc failed", method=method, code=code.name, error=str(exc))
            telemetry.RPCS.labels(method, code.name).inc()
            seconds.observe(time.perf_counter() - started)
            if tracing.on:
                telemetry.fail_server_span(code.name, code.value[0], exc)
            await context.abort_with_status(
                to_rpc_status(exc, trailing=(("x-request-id", _request_id.get()),))
            )

        def ok(started: float) -> None:
            calls_ok.inc()
            seconds.observe(time.perf_counter() - started)

        wrapped: Callable[..., Any]
        if not streaming_response:

            async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                self._enter()
                traced = (
                    telemetry.start_server_span(method, context.invocation_metadata() or ())
                    if tracing.on
                    else None
                )
                try:
                    response = await behaviour(begin(request, context), context)
                except Exception as exc:
                    if _is_abort(exc):
                        raise
                    await fail(context, exc, started)
                    return None
                else:
                    ok(started)
                    return response
                finally:
                    self._exit()
                    if traced is not None:
                        telemetry.end_server_span(traced)

            wrapped = unary_response
        else:

            async def stream_response(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                started = time.perf_counter()
                self._enter()
                traced = (
                    telemetry.start_server_span(method, context.invocation_metadata() or ())
                    if tracing.on
                    else None
                )
                try:
                    result = behaviour(begin(request, context), context)
                    if hasattr(result, "__aiter__"):
                        async for item in result:
                            yield item
                    else:  # a handler that writes with context.write and returns
                        await result
                except Exception as exc:
                    if _is_abort(exc):
                        raise
                    await fail(context, exc, started)
                else:
                    ok(started)
                finally:
                    self._exit()
                    if traced is not None:
                        telemetry.end_server_span(traced)

            wrapped = stream_response

        return handler_factory(
            wrapped,
            request_deserializer=_safe_deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


def _shape(
    handler: grpc.RpcMethodHandler,
) -> tuple[Callable[..., Any], Callable[..., Any], bool, bool]:
    """(handler factory, behaviour, streaming request?, streaming response?)"""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler, handler.unary_unary, False, False
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler, handler.stream_unary, True, False
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler, handler.unary_stream, False, True
    return grpc.stream_stream_rpc_method_handler, handler.stream_stream, True, True


def _is_abort(exc: Exception) -> bool:
    """context.abort() inside a handler raises grpc's own AbortError: already answered.
    An RpcError from a call to another service is not: it is mapped like any error."""
    return type(exc).__name__ == "AbortError"
