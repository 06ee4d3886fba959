"""Errors in OpenAI's JSON shape: ``{"error": {"message", "type", "param", "code"}}``.

Domain errors keep the one mapping ``voiceslot.rpc.status`` has (error → gRPC code →
HTTP status, the same message and retry hint gRPC callers get); this module only says
it the way OpenAI's clients read it: the ``type`` OpenAI uses for each status, the
request field as this API names it (``input`` where the domain says ``text``), and a
``Retry-After`` header where a retry may succeed. Errors that exist only over HTTP
(unknown model, a format this deployment cannot make) are ``ApiError``s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse

from voiceslot import errors
from voiceslot.logs import get_logger
from voiceslot.rpc.status import clip, http_status, public_message, retry_after_s

log = get_logger("voiceslot.openai_api")

PARAMS = {
    "text": "input",
    "voice_id": "voice",
    "options.speed": "speed",
    "options": "speed",  # an engine without speed controls (pre-sonic-3 Cartesia)
    "format.encoding": "response_format",
    "format.sample_rate_hz": "response_format",
}
"""Domain field → this API's request field, where they differ."""

_TYPES = {
    401: "invalid_request_error",
    403: "permission_error",
    429: "requests",
}
_CODES = {
    401: "invalid_api_key",
    403: "permission_denied",
    404: "not_found",
    413: "request_too_large",
    429: "rate_limit_exceeded",
    503: "service_unavailable",
    504: "timeout",
}


@dataclass
class ApiError(Exception):
    """An answer of this API that is not audio."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    retry_after: float | None = None

    @property
    def type(self) -> str:
        if self.status >= 500:
            return "server_error"
        return _TYPES.get(self.status, "invalid_request_error")


def bad_request(param: str, message: str, *, code: str = "invalid_value") -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code=code)


def from_exception(exc: Exception) -> ApiError:
    """The answer for anything a handler raised: ``ApiError`` as it is, a domain or
    provider error through the shared mapping, anything else a logged 500."""
    if isinstance(exc, ApiError):
        return exc
    status = http_status(exc)
    if status == 500:  # a bug: the details go to the log, the caller hears "internal error"
        log.error("unhandled error", error=repr(exc), exc_info=exc)
    param = None
    if isinstance(exc, errors.InvalidArgument):
        param = PARAMS.get(exc.field, exc.field)
    elif isinstance(exc, errors.NotFound) and exc.kind == "voice":
        param = "voice"
    message = public_message(exc)
    if param is not None and isinstance(exc, errors.InvalidArgument):
        message = f"{param}: {exc.description}"  # the request's own name for the field
    return ApiError(
        status,
        clip(message, 1024),
        param=param,
        code=_CODES.get(status, "invalid_value" if status == 400 else None),
        retry_after=retry_after_s(exc),
    )


def body(error: ApiError) -> dict[str, Any]:
    return {
        "error": {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.code,
        }
    }


def error_response(error: ApiError, *, request_id: str = "") -> JSONResponse:
    headers = {"x-request-id": request_id} if request_id else {}
    if error.retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(error.retry_after)))
    return JSONResponse(body(error), status_code=error.status, headers=headers)
