"""The storage port."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from voiceslot.errors import InvalidArgument, PayloadTooLarge

# Keys are slash-separated segments of safe characters; no segment may be empty, "." or
# "..", so a key can never climb out of its root or name an absolute path.
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,199}$")
MAX_KEY_LENGTH = 512


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe storage key, else raise ``InvalidArgument``."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidArgument("key", "must be 1..512 characters")
    for segment in key.split("/"):
        if segment in (".", "..") or not _SEGMENT.match(segment):
            raise InvalidArgument("key", f"unsafe segment {segment!r}")
    return key


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    modified_at: datetime


@runtime_checkable
class Storage(Protocol):
    async def put(self, key: str, data: bytes) -> StoredObject:
        """Write ``data`` atomically: readers see the old object or the new, never half."""
        ...

    async def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """Raises ``voiceslot.errors.NotFound`` for a missing key. With ``max_bytes``, an
        object larger than that raises ``PayloadTooLarge`` after reading at most
        ``max_bytes + 1`` bytes: a download is bounded like an upload."""
        ...

    def stream(self, key: str, *, chunk_size: int = 256 * 1024) -> AsyncIterator[bytes]: ...

    async def delete(self, key: str) -> None:
        """Deleting a missing key is not an error."""
        ...

    async def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> AsyncIterator[StoredObject]: ...

    async def download_url(self, key: str, *, ttl_s: int) -> str | None:
        """A time-limited URL for the object, or None where the backend has none."""
        ...


def within_limit(key: str, data: bytes, max_bytes: int | None) -> bytes:
    """``data`` (read with a limit of ``max_bytes + 1``), or ``PayloadTooLarge`` if the
    object was larger than ``max_bytes``."""
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadTooLarge(f"object {key}", max_bytes)
    return data
