"""The one mapping from domain errors to gRPC statuses with rich details.

Handlers raise ``voiceslot.errors`` exceptions; the interceptor calls ``to_rpc_status``.
Anything unexpected becomes INTERNAL with a generic message (details go to the log), so
bad input can only ever surface as INVALID_ARGUMENT and friends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from voiceslot import errors as e
from voiceslot.providers.errors import ProviderError

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
    if isinstance(exc, ProviderError):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


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
                            field=exc.field, description=exc.description
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
                            subject=exc.field, description=str(exc)
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
                            subject=v.subject, description=v.description
                        )
                        for v in exc.violations
                    ]
                )
            )
        )
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None and isinstance(exc, (e.QuotaExceeded, e.Unavailable, ProviderError)):
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
    if code == grpc.StatusCode.INTERNAL:
        message = "internal error"
    elif isinstance(exc, e.VoiceslotError):
        message = exc.message
    else:
        message = str(exc)
    proto = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=message, details=details_for(exc)
    )
    status = rpc_status.to_status(proto)
    return RpcStatus(status.code, status.details, (*status.trailing_metadata, *trailing))
