"""Retention: old rendered audio goes, everything else stays."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from voiceslot.errors import InvalidArgument
from voiceslot.storage.base import Storage, StoredObject
from voiceslot.storage.local import LocalStorage
from voiceslot.storage.retention import apply_retention, expired

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.mark.parametrize(
    ("age", "is_expired"),
    [
        (timedelta(0), False),
        (DAY - timedelta(seconds=1), False),
        (DAY, False),
        (DAY + timedelta(microseconds=1), True),
        (30 * DAY, True),
        (-DAY, False),
    ],
)
def test_expired(age: timedelta, is_expired: bool) -> None:
    obj = StoredObject("audio/x.wav", 1, NOW - age)
    assert expired(obj, now=NOW, max_age=DAY) is is_expired


async def put_all(storage: Storage, keys: list[str]) -> datetime:
    """Put ``keys``; the newest modification time among them."""
    return max([(await storage.put(key, b"x")).modified_at for key in keys])


async def test_sweeps_only_under_the_prefix(storage: Storage) -> None:
    rendered = ["audio/job-1/a.wav", "audio/job-1/b.wav", "audio/job-2/c.mp3"]
    kept = ["samples/voice-1/sample.wav", "audiobooks/book.mp3", "voices/v1/latents.pt"]
    newest = await put_all(storage, rendered + kept)

    later = newest + DAY + timedelta(seconds=5)
    deleted = await apply_retention(storage, prefix="audio", max_age=DAY, now=later)

    assert sorted(deleted) == rendered
    remaining = sorted([obj.key async for obj in storage.list()])
    assert remaining == sorted(kept)


async def test_keeps_objects_younger_than_the_age(storage: Storage) -> None:
    newest = await put_all(storage, ["audio/a.wav", "audio/b.wav"])
    assert (
        await apply_retention(
            storage, prefix="audio/", max_age=DAY, now=newest + timedelta(hours=23)
        )
        == []
    )
    assert sorted([obj.key async for obj in storage.list()]) == ["audio/a.wav", "audio/b.wav"]


async def test_mixed_ages(tmp_path: Path) -> None:
    """Only the objects past the age go (local files, whose times can be set)."""
    storage = LocalStorage(tmp_path)
    await put_all(
        storage, ["audio/old-1.wav", "audio/old-2.wav", "audio/fresh.wav", "samples/old.wav"]
    )
    now = datetime.now(UTC)
    old = (now - 3 * DAY).timestamp()
    for key in ("audio/old-1.wav", "audio/old-2.wav", "samples/old.wav"):
        os.utime(storage.path_of(key), (old, old))

    deleted = await apply_retention(storage, prefix="audio", max_age=DAY, now=now)

    assert sorted(deleted) == ["audio/old-1.wav", "audio/old-2.wav"]
    assert sorted([obj.key async for obj in storage.list()]) == [
        "audio/fresh.wav",
        "samples/old.wav",
    ]


@pytest.mark.parametrize("prefix", ["", "/", "//"])
async def test_refuses_to_sweep_everything(storage: Storage, prefix: str) -> None:
    await storage.put("samples/s.wav", b"x")
    with pytest.raises(ValueError):
        await apply_retention(storage, prefix=prefix, max_age=DAY, now=NOW + 365 * DAY)
    assert await storage.exists("samples/s.wav")


@pytest.mark.parametrize("prefix", ["../samples", "audio/../samples", "a//b"])
async def test_refuses_unsafe_prefixes(storage: Storage, prefix: str) -> None:
    with pytest.raises(InvalidArgument):
        await apply_retention(storage, prefix=prefix, max_age=DAY, now=NOW)


async def test_refuses_nonpositive_age(storage: Storage) -> None:
    with pytest.raises(ValueError):
        await apply_retention(storage, prefix="audio", max_age=timedelta(0), now=NOW)
