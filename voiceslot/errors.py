"""Domain errors: what went wrong, in words the domain knows.

Every layer raises these; exactly one place (``voiceslot.rpc.status``) turns them into
gRPC status codes with details, so a handler never picks a status code by hand and bad
input can never surface as INTERNAL. Pure: no gRPC, HTTP or SQL here.
"""

from __future__ import annotations

from dataclasses import dataclass


class VoiceslotError(Exception):
    """Base of every error the services report to callers on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(VoiceslotError):
    """The request is malformed; ``field`` names the offending field (dotted path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


class NotFound(VoiceslotError):
    """The thing does not exist, or the caller may not know that it does."""

    def __init__(self, kind: str, ident: str, *, message: str | None = None) -> None:
        """``message`` replaces the default text: for an answer relayed from another
        service, which already says what was not found."""
        super().__init__(message or f"{kind} {shown(ident)} not found")
        self.kind = kind
        self.ident = ident


class AlreadyExists(VoiceslotError):
    pass


class FailedPrecondition(VoiceslotError):
    """The request is valid but the system is not in a state that allows it."""


class Unauthenticated(VoiceslotError):
    pass


class PermissionDenied(VoiceslotError):
    pass


class PayloadTooLarge(VoiceslotError):
    """An upload or text is over its cap; maps to RESOURCE_EXHAUSTED like gRPC's own."""

    def __init__(self, field: str, limit: int, unit: str = "bytes") -> None:
        super().__init__(f"{field} exceeds the limit of {limit} {unit}")
        self.field = field
        self.limit = limit


@dataclass(frozen=True)
class QuotaViolation:
    subject: str
    description: str


class QuotaExceeded(VoiceslotError):
    """A per-caller quota or rate limit is spent. ``retry_after`` in seconds, if known."""

    def __init__(
        self,
        message: str,
        *,
        violations: tuple[QuotaViolation, ...] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.violations = violations
        self.retry_after = retry_after


class Unavailable(VoiceslotError):
    """A dependency (provider, database, engine) cannot serve now; retrying may help."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(VoiceslotError):
    pass


class Aborted(VoiceslotError):
    """A concurrent change won a race (fencing failed); the caller may retry."""


def bounded(text: str, limit: int = 500) -> str:
    """Cut an error text to ``limit`` characters so stored errors stay bounded."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


SHOWN_CHARS = 48
"""How much of a caller's value an error quotes back: enough to recognise it."""


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """The one way an error message quotes a value the caller sent: quoted, ASCII only
    (invisible and look-alike characters appear as escapes), at most ``limit`` characters
    of it, and its full length when it was cut.

    A request may carry megabytes in one field; an answer that copied it back would be
    refused by the caller's own gRPC library ("metadata size exceeds hard limit") instead
    of telling it what was wrong. ASCII also keeps the percent-encoded grpc-message small.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return ascii(text)
    return f"{ascii(text[:limit])}… ({len(text)} characters)"
