"""S3 storage: the production adapter of the storage port, through boto3.

Objects live in one bucket under an optional prefix (several deployments or tenants can
share a bucket). A PUT replaces an object whole, so readers see the old object or the new,
never half of one. boto3 is blocking: every call runs in a worker thread through
``asyncio.to_thread`` on one client, which boto3 documents as thread-safe (sessions are
not, so a private session creates it). Works against AWS and S3-compatible servers
(MinIO, Ceph, moto) given ``endpoint_url``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from voiceslot.errors import InvalidArgument, NotFound, Unavailable
from voiceslot.storage.base import StoredObject, validate_key, within_limit

_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_TRANSIENT_CODES = frozenset(
    {
        "500",
        "502",
        "503",
        "504",
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
    }
)


class S3Storage:
    """Objects are keys ``<prefix>/<key>`` in ``bucket``."""

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        client: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        page_size: int = 1000,
    ) -> None:
        if not bucket:
            raise ValueError("an S3 bucket name is required")
        if not 1 <= page_size <= 1000:
            raise ValueError(f"page_size must be 1..1000 (S3's maximum), not {page_size}")
        self.bucket = bucket
        self.prefix = _normalize_prefix(prefix)
        self.page_size = page_size
        self._client = client or _make_client(endpoint_url=endpoint_url, region=region)

    def _full_key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    async def put(self, key: str, data: bytes) -> StoredObject:
        full = self._full_key(key)
        await _call(key, self._client.put_object, Bucket=self.bucket, Key=full, Body=data)
        # PUT does not answer with the modification time; retention needs the server's.
        head = await _call(key, self._client.head_object, Bucket=self.bucket, Key=full)
        return StoredObject(key, head["ContentLength"], _utc(head["LastModified"]))

    async def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        full = self._full_key(key)
        response = await _call(key, self._client.get_object, Bucket=self.bucket, Key=full)
        with response["Body"] as body:
            if max_bytes is None:
                return await _call(key, body.read)
            # Read one byte past the cap: enough to know it is over, never the whole.
            return within_limit(key, await _call(key, body.read, max_bytes + 1), max_bytes)

    async def stream(self, key: str, *, chunk_size: int = 256 * 1024) -> AsyncIterator[bytes]:
        full = self._full_key(key)
        response = await _call(key, self._client.get_object, Bucket=self.bucket, Key=full)
        with response["Body"] as body:
            while chunk := await _call(key, body.read, chunk_size):
                yield chunk

    async def delete(self, key: str) -> None:
        # S3 answers a DELETE of a missing key with success, as the port wants.
        full = self._full_key(key)
        await _call(key, self._client.delete_object, Bucket=self.bucket, Key=full)

    async def exists(self, key: str) -> bool:
        try:
            full = self._full_key(key)
            await _call(key, self._client.head_object, Bucket=self.bucket, Key=full)
        except NotFound:
            return False
        return True

    async def list(self, prefix: str = "") -> AsyncIterator[StoredObject]:
        request: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self.prefix + prefix,
            "MaxKeys": self.page_size,
        }
        while True:
            page = await _call(prefix, self._client.list_objects_v2, **request)
            for item in page.get("Contents", ()):
                key = item["Key"][len(self.prefix) :]
                # Objects written behind our back under keys this API cannot address
                # (directory markers "a/", "a//b") are not ours to report.
                if _is_valid_key(key):
                    yield StoredObject(key, item["Size"], _utc(item["LastModified"]))
            if not page.get("IsTruncated"):
                return
            request["ContinuationToken"] = page["NextContinuationToken"]

    async def download_url(self, key: str, *, ttl_s: int) -> str | None:
        full = self._full_key(key)
        # Signing is local, but resolving credentials the first time may do I/O.
        return await asyncio.to_thread(
            self._client.generate_presigned_url,
            "get_object",
            Params={"Bucket": self.bucket, "Key": full},
            ExpiresIn=ttl_s,
        )


def _make_client(*, endpoint_url: str | None, region: str | None) -> Any:
    config = Config(
        retries={"mode": "standard"},
        # S3-compatible servers are usually addressed by host or IP, where bucket
        # subdomains (virtual-hosted style) do not resolve.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        signature_version="s3v4",
    )
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def _normalize_prefix(prefix: str) -> str:
    """``"a/b"``, ``"/a/b/"`` → ``"a/b/"``; ``""`` stays empty."""
    stripped = prefix.strip("/")
    if not stripped:
        return ""
    try:
        validate_key(stripped)
    except InvalidArgument as e:
        raise ValueError(f"unsafe S3 key prefix {prefix!r}: {e.description}") from None
    return stripped + "/"


def _is_valid_key(key: str) -> bool:
    try:
        validate_key(key)
    except InvalidArgument:
        return False
    return True


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


async def _call(key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking boto3 call about ``key`` in a thread. A missing object becomes
    ``NotFound`` (naming the key as the caller knows it, without our prefix); a passing
    fault of the service or the network becomes ``Unavailable``; anything else (denied
    access, a missing bucket) is a configuration fault and propagates as is."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in _MISSING_CODES:
            raise NotFound("object", key) from None
        if code in _TRANSIENT_CODES:
            raise Unavailable(f"object storage failed ({code}); try again") from e
        raise
    except (BotoConnectionError, HTTPClientError) as e:
        raise Unavailable(f"object storage unreachable: {e}") from e
