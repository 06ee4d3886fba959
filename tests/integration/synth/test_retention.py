"""Retention in the synthesizer's worker loop: rendered audio older than
``storage.retention_days`` is deleted, round after round, on local files and on S3, and
nothing outside the rendered-audio prefix (voice samples) is ever touched. Built the way
``voiceslot serve`` builds it (``build_synth`` from settings), with a short sweep period
(``synth.retention_every_s``)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from synth_svc.app import build_synth
from voiceslot.clock import ManualClock
from voiceslot.config import Settings, StorageConfig, SynthConfig
from voiceslot.storage.factory import build_storage
from voiceslot.storage.local import LocalStorage

from .support import eventually

DAY = 86400.0


def settings(tmp_path: Path, storage: StorageConfig) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        storage=storage,
        synth=SynthConfig(
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'synth.sqlite3'}", retention_every_s=0.05
        ),
    )


def age(storage: LocalStorage, key: str, days: float) -> None:
    stamp = time.time() - days * DAY
    os.utime(storage.path_of(key), (stamp, stamp))


async def test_the_worker_loop_sweeps_old_audio_on_local_files(tmp_path, monkeypatch):
    s = settings(tmp_path, StorageConfig(root=tmp_path / "store", retention_days=1))
    storage = build_storage(s)
    assert isinstance(storage, LocalStorage)
    for key in ["audio/job_a/it_old.wav", "audio/job_b/it_young.mp3", "samples/v_1/sample.wav"]:
        await storage.put(key, b"bytes")
    age(storage, "audio/job_a/it_old.wav", 3)
    age(storage, "samples/v_1/sample.wav", 30)  # old, but not rendered audio
    age(storage, "audio/job_b/it_young.mp3", 0.5)

    app = await build_synth(s, storage=storage, providers={})
    app.worker.start()  # retention runs with or without an allocator to talk to
    try:
        await eventually(
            lambda: not storage.path_of("audio/job_a/it_old.wav").exists(), what="old swept"
        )
        assert await storage.exists("audio/job_b/it_young.mp3")
        assert await storage.exists("samples/v_1/sample.wav")
        # Later rounds sweep what has aged since.
        age(storage, "audio/job_b/it_young.mp3", 1.01)
        await eventually(
            lambda: not storage.path_of("audio/job_b/it_young.mp3").exists(), what="aged swept"
        )
        assert await storage.exists("samples/v_1/sample.wav")
    finally:
        await app.stop()


async def test_the_worker_loop_sweeps_old_audio_on_s3(tmp_path, monkeypatch, moto_s3, s3_env):
    bucket = moto_s3.new_bucket()
    s = settings(
        tmp_path,
        StorageConfig(
            kind="s3",
            bucket=bucket,
            prefix="tenant",
            endpoint_url=moto_s3.endpoint,
            region="us-east-1",
            retention_days=1,
        ),
    )
    storage = build_storage(s)
    for key in ["audio/job_a/it_1.wav", "audio/job_a/it_2.ogg", "samples/v_1/sample.wav"]:
        await storage.put(key, b"bytes")
    # S3 sets LastModified itself: the worker's clock runs two days ahead instead.
    clock = ManualClock(datetime.now(UTC) + timedelta(days=2))
    app = await build_synth(s, storage=storage, providers={}, clock=clock)
    app.worker.start()
    try:
        await eventually(
            lambda: moto_s3.keys(bucket, "tenant/audio/") == [], timeout=15, what="audio swept"
        )
        assert moto_s3.keys(bucket) == ["tenant/samples/v_1/sample.wav"]
    finally:
        await app.stop()
