"""Local filesystem storage: the embedded default."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from voiceslot.errors import InvalidArgument, NotFound
from voiceslot.storage.base import StoredObject, validate_key, within_limit


class LocalStorage:
    """Objects are files under ``root``; writes go to a temporary file in the same
    directory and are renamed into place, so a crash never leaves half a file behind."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path_of(self, key: str) -> Path:
        path = (self.root / validate_key(key)).resolve()
        # validate_key already forbids "..": this guards symlinks planted inside the root.
        if not path.is_relative_to(self.root):
            raise NotFound("object", key)
        return path

    def _file_of(self, key: str) -> Path:
        """The path of an existing object; a directory (a key prefix) is not an object."""
        path = self.path_of(key)
        if not path.is_file():
            raise NotFound("object", key)
        return path

    def _put_sync(self, key: str, data: bytes) -> StoredObject:
        path = self.path_of(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise InvalidArgument("key", f"{key!r} lies under an existing object") from None
        if path.is_dir():
            raise InvalidArgument("key", f"{key!r} is a prefix of existing objects")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return self._stat(key, path)

    def _stat(self, key: str, path: Path) -> StoredObject:
        st = path.stat()
        return StoredObject(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    async def put(self, key: str, data: bytes) -> StoredObject:
        return await asyncio.to_thread(self._put_sync, key, data)

    async def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        path = self._file_of(key)
        try:
            data = await asyncio.to_thread(
                _read, path, None if max_bytes is None else max_bytes + 1
            )
        except FileNotFoundError:  # deleted between the check and the read
            raise NotFound("object", key) from None
        return within_limit(key, data, max_bytes)

    async def stream(self, key: str, *, chunk_size: int = 256 * 1024) -> AsyncIterator[bytes]:
        path = self._file_of(key)
        try:
            f = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise NotFound("object", key) from None
        try:
            while chunk := await asyncio.to_thread(f.read, chunk_size):
                yield chunk
        finally:
            f.close()

    async def delete(self, key: str) -> None:
        path = self.path_of(key)
        if path.is_file():
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(path.unlink)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path_of(key).is_file)

    async def list(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        # Walk only the directory the prefix names, not the whole tree.
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root

        def scan() -> list[StoredObject]:
            found = []
            if not base.is_dir():
                return found
            for path in sorted(base.rglob("*")):
                if not path.is_file() or path.name.startswith(".tmp-"):
                    continue
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    found.append(self._stat(key, path))
            return found

        for obj in await asyncio.to_thread(scan):
            yield obj

    async def download_url(self, key: str, *, ttl_s: int) -> str | None:
        validate_key(key)
        return None


def _read(path: Path, limit: int | None) -> bytes:
    """The file's bytes, at most ``limit`` of them."""
    with open(path, "rb") as f:
        return f.read() if limit is None else f.read(limit)
