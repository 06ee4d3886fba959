"""The storage port's contract, run against every backend (see conftest), plus what only
S3 has: a prefix inside a shared bucket, presigned URLs, error translation."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config

from voiceslot.errors import InvalidArgument, NotFound, Unavailable
from voiceslot.storage.base import Storage
from voiceslot.storage.local import LocalStorage
from voiceslot.storage.s3 import S3Storage

TENANT = "tenant-a"

HOSTILE_KEYS = [
    "../etc/passwd",
    "a/../../etc/passwd",
    "/abs",
    "/etc/passwd",
    "a//b",
    "a/",
    "",
    ".",
    "a/./b",
    "nul\x00byte",
    "new\nline",
    "back\\slash",
    "x" * 513,
    "/".join(["seg"] * 200),  # over 512 characters in total
    "caf\u00e9",
]


async def collect(storage: Storage, prefix: str = "") -> dict[str, int]:
    return {obj.key: obj.size async for obj in storage.list(prefix)}


async def read_stream(storage: Storage, key: str, chunk_size: int) -> list[bytes]:
    return [chunk async for chunk in storage.stream(key, chunk_size=chunk_size)]


async def test_put_then_get(storage: Storage) -> None:
    before = datetime.now(UTC)
    stored = await storage.put("audio/job-1/item.wav", b"RIFF and some bytes")
    assert stored.key == "audio/job-1/item.wav"
    assert stored.size == len(b"RIFF and some bytes")
    # Retention compares against this: it must be the real time of the write, in UTC.
    assert stored.modified_at.tzinfo is not None
    assert abs(stored.modified_at - before) < timedelta(seconds=30)
    assert await storage.get("audio/job-1/item.wav") == b"RIFF and some bytes"
    assert await storage.exists("audio/job-1/item.wav")


async def test_binary_and_empty_objects(storage: Storage) -> None:
    blob = os.urandom(4096) + b"\x00\xff" * 10
    await storage.put("blob.bin", blob)
    await storage.put("empty.bin", b"")
    assert await storage.get("blob.bin") == blob
    assert await storage.get("empty.bin") == b""
    assert (await collect(storage))["empty.bin"] == 0


async def test_missing_objects(storage: Storage) -> None:
    with pytest.raises(NotFound) as info:
        await storage.get("audio/nope.wav")
    assert info.value.ident == "audio/nope.wav"  # the caller's key, not a backend path
    with pytest.raises(NotFound):
        await read_stream(storage, "audio/nope.wav", 1024)
    assert not await storage.exists("audio/nope.wav")
    await storage.delete("audio/nope.wav")  # deleting a missing key is fine


async def test_delete(storage: Storage) -> None:
    await storage.put("a/b.txt", b"x")
    await storage.put("a/c.txt", b"y")
    await storage.delete("a/b.txt")
    assert not await storage.exists("a/b.txt")
    assert await storage.get("a/c.txt") == b"y"
    assert await collect(storage) == {"a/c.txt": 1}


async def test_stream_in_chunks(storage: Storage) -> None:
    data = os.urandom(1024 * 1024 + 17)
    await storage.put("big/audio.ogg", data)
    parts = await read_stream(storage, "big/audio.ogg", 64 * 1024)
    assert b"".join(parts) == data
    assert len(parts) >= 17
    assert all(0 < len(part) <= 64 * 1024 for part in parts)


async def test_list_under_prefix(storage: Storage) -> None:
    objects = {
        "audio/job-1/a.wav": b"1",
        "audio/job-1/b.wav": b"22",
        "audio/job-2/c.mp3": b"333",
        "audio/job-2/d.mp3": b"4444",
        "audio/job-2/e.mp3": b"55555",
        "samples/voice-1/sample.wav": b"666666",
    }
    for key, data in objects.items():
        await storage.put(key, data)
    everything = {key: len(data) for key, data in objects.items()}
    assert await collect(storage) == everything
    assert await collect(storage, "audio/") == {
        k: v for k, v in everything.items() if k.startswith("audio/")
    }
    assert await collect(storage, "audio/job-2/") == {
        k: v for k, v in everything.items() if "job-2" in k
    }
    assert await collect(storage, "nothing/") == {}
    listed = [obj async for obj in storage.list("samples/")]
    assert [obj.key for obj in listed] == ["samples/voice-1/sample.wav"]
    assert listed[0].modified_at.tzinfo is not None


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=repr)
async def test_hostile_keys_are_rejected(storage: Storage, key: str) -> None:
    with pytest.raises(InvalidArgument):
        await storage.put(key, b"x")
    with pytest.raises(InvalidArgument):
        await storage.get(key)
    with pytest.raises(InvalidArgument):
        await read_stream(storage, key, 1024)
    with pytest.raises(InvalidArgument):
        await storage.exists(key)
    with pytest.raises(InvalidArgument):
        await storage.delete(key)
    with pytest.raises(InvalidArgument):
        await storage.download_url(key, ttl_s=60)
    assert await collect(storage) == {}


async def test_a_prefix_is_not_an_object(storage: Storage) -> None:
    """A key that names a "folder" of other objects behaves as missing on every backend."""
    await storage.put("audio/job-1/a.wav", b"x")
    with pytest.raises(NotFound):
        await storage.get("audio/job-1")
    with pytest.raises(NotFound):
        await read_stream(storage, "audio/job-1", 1024)
    assert not await storage.exists("audio/job-1")
    await storage.delete("audio/job-1")  # deleting a missing key is not an error
    assert await storage.get("audio/job-1/a.wav") == b"x"


async def test_overwrite_is_atomic(storage: Storage) -> None:
    """Readers racing writers see one whole version or the other, never a mix."""
    versions = [bytes([n]) * (512 * 1024) for n in range(1, 5)]
    await storage.put("audio/race.wav", versions[0])

    async def writer() -> None:
        for data in versions[1:] * 2:
            await storage.put("audio/race.wav", data)

    async def reader() -> list[bytes]:
        return [await storage.get("audio/race.wav") for _ in range(8)]

    _, *reads = await asyncio.gather(writer(), reader(), reader())
    seen = [data for batch in reads for data in batch]
    assert all(data in versions for data in seen)
    assert await storage.get("audio/race.wav") == versions[-1]
    assert list(await collect(storage)) == ["audio/race.wav"]  # no temporary leftovers


async def test_download_url(storage: Storage) -> None:
    data = os.urandom(2048)
    await storage.put("audio/job-1/out.mp3", data)
    url = await storage.download_url("audio/job-1/out.mp3", ttl_s=300)
    if isinstance(storage, LocalStorage):
        assert url is None  # local files have no URL; callers stream instead
        return
    assert url is not None and "X-Amz-Signature" in url and "X-Amz-Expires=300" in url
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200
    assert response.content == data


# --- S3 only ---------------------------------------------------------------------------


@pytest.fixture
def s3_storage(s3_bucket: str, s3_client: Any) -> S3Storage:
    return S3Storage(bucket=s3_bucket, prefix=f"/{TENANT}/", client=s3_client, page_size=3)


async def test_s3_keeps_to_its_prefix(
    s3_storage: S3Storage, s3_client: Any, s3_bucket: str
) -> None:
    await s3_storage.put("audio/x.wav", b"ours")
    stored = s3_client.get_object(Bucket=s3_bucket, Key=f"{TENANT}/audio/x.wav")
    assert stored["Body"].read() == b"ours"
    # Neighbours in the same bucket: another tenant, and a sibling prefix sharing a stem.
    s3_client.put_object(Bucket=s3_bucket, Key="tenant-b/audio/x.wav", Body=b"theirs")
    s3_client.put_object(Bucket=s3_bucket, Key=f"{TENANT}-old/audio/y.wav", Body=b"theirs")
    assert await collect(s3_storage) == {"audio/x.wav": 4}
    assert not await s3_storage.exists("y.wav")


async def test_s3_list_pages_and_skips_unaddressable_keys(
    s3_storage: S3Storage, s3_client: Any, s3_bucket: str
) -> None:
    for n in range(10):
        await s3_storage.put(f"audio/{n:02d}.wav", b"x" * n)
    # Written by some other tool: a directory marker and an empty segment.
    s3_client.put_object(Bucket=s3_bucket, Key=f"{TENANT}/audio/", Body=b"")
    s3_client.put_object(Bucket=s3_bucket, Key=f"{TENANT}/audio//z.wav", Body=b"")
    assert await collect(s3_storage, "audio/") == {f"audio/{n:02d}.wav": n for n in range(10)}


async def test_s3_download_url_validates_key(s3_storage: S3Storage) -> None:
    with pytest.raises(InvalidArgument):
        await s3_storage.download_url("../secret", ttl_s=60)


async def test_s3_unreachable_is_unavailable(s3_bucket: str) -> None:
    dead = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    ).client(
        "s3",
        endpoint_url="http://127.0.0.1:1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2),
    )
    storage = S3Storage(bucket=s3_bucket, client=dead)
    with pytest.raises(Unavailable):
        await storage.get("audio/x.wav")


def test_s3_rejects_unsafe_configuration() -> None:
    with pytest.raises(ValueError):
        S3Storage(bucket="b", prefix="../escape", client=object())
    with pytest.raises(ValueError):
        S3Storage(bucket="", client=object())
