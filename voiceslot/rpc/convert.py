"""Small conversions between Python values and protobuf well-known types."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def seconds(value: Duration, *, present: bool) -> float | None:
    """A request's optional Duration field in seconds, or None when unset."""
    return value.ToNanoseconds() / 1e9 if present else None
