"""The one mapping from domain errors to gRPC statuses with rich details.

Handlers raise ``voiceslot.errors`` exceptions; the interceptor calls ``to_rpc_status``.
Anything unexpected becomes INTERNAL with a generic message (details go to the log), so
bad input can only ever surface as INVALID_ARGUMENT and friends.

Every answer is bounded here, whatever an error carries: the message and each detail's
texts are cut to a few hundred bytes and at most ``MAX_VIOLATIONS`` violations travel. A
status travels in HTTP/2 trailers, which a default client refuses past 8 KiB (soft) and
16 KiB (hard); an error quoting a megabyte of the request would reach the caller as
"metadata size exceeds hard limit" instead of saying what was wrong. Values are quoted
short where errors are made (``voiceslot.errors.shown``); this is the backstop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from voiceslot import errors as e
from voiceslot.db import is_database_unavailable, is_transaction_conflict
from voiceslot.providers.errors import InvalidInput, ProviderError

_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (e.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (e.NotFound, grpc.StatusCode.NOT_FOUND),
    (e.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (e.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (e.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (e.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (e.PayloadTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (e.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (e.Aborted, grpc.StatusCode.ABORTED),
]


def grpc_code(exc: Exception) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    if isinstance(exc, InvalidInput):
        # The provider refused what the caller sent (text, a language it does not speak):
        # the caller's to fix. UNAVAILABLE would tell it to retry the same request.
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, ProviderError) or is_database_unavailable(exc):
        return grpc.StatusCode.UNAVAILABLE
    if is_transaction_conflict(exc):
        return grpc.StatusCode.ABORTED
    return grpc.StatusCode.INTERNAL


# The HTTP status of each gRPC code, as google.rpc.Code documents the pair, for answers
# over HTTP (the OpenAI-compatible API): the domain error picks the gRPC code above, this
# only translates it, so both protocols say the same thing of the same error.
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def http_status(exc: Exception) -> int:
    """The HTTP status for ``exc``: its gRPC code's (``grpc_code``), except that an
    oversized payload is 413, which HTTP has a status of its own for."""
    if isinstance(exc, e.PayloadTooLarge):
        return 413
    return _HTTP_STATUS.get(grpc_code(exc), 500)


def public_message(exc: Exception) -> str:
    """What a caller is told of ``exc``, bounded: the domain's own words, or a generic
    "internal error" for a bug (the details go to the log)."""
    if grpc_code(exc) == grpc.StatusCode.INTERNAL:
        return "internal error"
    return clip(exc.message if isinstance(exc, e.VoiceslotError) else str(exc), MESSAGE_BYTES)


def retry_after_s(exc: Exception) -> float | None:
    """When a retry may succeed, for the errors that say so."""
    if isinstance(exc, (e.QuotaExceeded, e.Unavailable, ProviderError)):
        return getattr(exc, "retry_after", None)
    return None


MESSAGE_BYTES = 1024
"""Most UTF-8 bytes of a status message (grpc-message percent-encodes non-ASCII: ≤ 3x)."""
DETAIL_BYTES = 512
"""Most UTF-8 bytes of each text inside a detail (a field name, a description)."""
MAX_VIOLATIONS = 16


def clip(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, on a character boundary, with "…"
    marking a cut."""
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return text
    return data[: max_bytes - 3].decode("utf-8", "ignore") + "…"


def _short(text: str) -> str:
    return clip(text, DETAIL_BYTES)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _retry_info(seconds: float) -> any_pb2.Any:
    whole = math.floor(seconds)
    return _pack(
        error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))
        )
    )


def details_for(exc: Exception) -> list[any_pb2.Any]:
    details: list[any_pb2.Any] = []
    if isinstance(exc, e.InvalidArgument):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=_short(exc.field), description=_short(exc.description)
                        )
                    ]
                )
            )
        )
    elif isinstance(exc, e.PayloadTooLarge):
        details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=_short(exc.field), description=_short(str(exc))
                        )
                    ]
                )
            )
        )
    elif isinstance(exc, e.QuotaExceeded):
        details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=_short(v.subject), description=_short(v.description)
                        )
                        for v in exc.violations[:MAX_VIOLATIONS]
                    ]
                )
            )
        )
    retry_after = retry_after_s(exc)
    if retry_after is not None:
        details.append(_retry_info(retry_after))
    return details


@dataclass(frozen=True)
class RpcStatus(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def to_rpc_status(exc: Exception, *, trailing: tuple[tuple[str, str], ...] = ()) -> grpc.Status:
    """The status to abort with; ``trailing`` metadata (the request id) travels with it."""
    from grpc_status import rpc_status

    code = grpc_code(exc)
    proto = status_pb2.Status(
        code=getattr(code_pb2, code.name),
        message=public_message(exc),
        details=details_for(exc),
    )
    status = rpc_status.to_status(proto)
    return RpcStatus(status.code, status.details, (*status.trailing_metadata, *trailing))
