"""Small conversions between Python values and protobuf well-known types."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime | None) -> Timestamp | None:
    """``value`` as a Timestamp (a naive value is taken as UTC, as ``FromDatetime`` does).
    By timedelta arithmetic: ``FromDatetime``'s calendar round trip cost several times as
    much, four times in every EnsureActiveVoice answer."""
    if value is None:
        return None
    since = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)) - _EPOCH
    return Timestamp(seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000)


def duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def seconds(value: Duration, *, present: bool) -> float | None:
    """A request's optional Duration field in seconds, or None when unset."""
    return value.ToNanoseconds() / 1e9 if present else None
