"""build_storage: the settings choose the backend, and what it builds really works."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from voiceslot.config import Settings, StorageConfig
from voiceslot.storage.factory import build_storage
from voiceslot.storage.local import LocalStorage
from voiceslot.storage.s3 import S3Storage


async def test_local_by_default_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    storage = build_storage(settings)
    assert isinstance(storage, LocalStorage)
    await storage.put("samples/v1/sample.wav", b"abc")
    assert (tmp_path / "data" / "storage" / "samples" / "v1" / "sample.wav").read_bytes() == b"abc"


async def test_local_with_an_explicit_root(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", storage=StorageConfig(root=tmp_path / "elsewhere")
    )
    storage = build_storage(settings)
    await storage.put("x.bin", b"1")
    assert (tmp_path / "elsewhere" / "x.bin").exists()


async def test_s3_from_settings(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    s3_endpoint: str,
    s3_bucket: str,
    s3_client: Any,
) -> None:
    # The adapter builds its own client: credentials come from the usual environment.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    settings = Settings(
        data_dir=tmp_path,
        storage=StorageConfig(
            kind="s3", bucket=s3_bucket, prefix="prod", endpoint_url=s3_endpoint, region="us-east-1"
        ),
    )
    storage = build_storage(settings)
    assert isinstance(storage, S3Storage)
    await storage.put("audio/a.wav", b"data")
    assert s3_client.get_object(Bucket=s3_bucket, Key="prod/audio/a.wav")["Body"].read() == b"data"
    assert await storage.get("audio/a.wav") == b"data"
    url = await storage.download_url("audio/a.wav", ttl_s=120)
    assert url is not None and "X-Amz-Signature=" in url  # SigV4, as AWS requires


def test_s3_needs_a_bucket(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, storage=StorageConfig(kind="s3"))
    with pytest.raises(ValueError, match="bucket"):
        build_storage(settings)
