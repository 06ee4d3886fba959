"""A brief of 200 items rendered by two synthesizer processes sharing one PostgreSQL
database and one S3 bucket (moto's server), speaking through the ElevenLabs emulator,
while the provider fails 10 % of calls transiently, refuses two items' text for good, and
one synthesizer is killed with SIGKILL mid-job.

Everything runs as separate OS processes, as deployed: ``voiceslot serve --only
allocator`` and two ``voiceslot serve --only synth`` (batch workers), on loopback only.
The dead worker's items are taken over by the survivor once their item lease (2 s here,
``synth.item_lease_s``) runs out.

Outcome: 198 items stored, 2 failed with the provider's reason, progress reported
monotonically up to exactly 1.0, and the bucket holds exactly the 198 files."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc
import psycopg
import pytest
import soundfile as sf
import yaml

from tests.acceptance.conftest import read_port
from tests.conftest import ADMIN_KEY, ALICE_KEY, TEST_KEYS, auth
from tests.integration.synth.support import REJECT_MARKER, MotoS3, RejectingEmulator
from tests.support import ensure_ready, register
from voiceslot.testing.emulator import ELEVENLABS, Op
from voiceslot.v1 import allocator_pb2 as apb
from voiceslot.v1 import allocator_pb2_grpc, common_pb2, synthesizer_pb2_grpc
from voiceslot.v1 import synthesizer_pb2 as spb

pytestmark = pytest.mark.postgres

ITEMS = 200
REFUSED = {37, 151}
"""Positions whose text the provider refuses (400) every time."""
ITEM_LEASE_S = 2.0
PROVIDER_LATENCY_S = 0.12
ERROR_RATE = 0.1
RATE = 16000
BUDGET_S = 90.0
S3_PREFIX = "briefs"


@dataclass
class Service:
    name: str
    process: subprocess.Popen[str]
    port: int
    log: IO[str]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def holder(self) -> str:
        """How this process names itself on leases and claimed items."""
        return f"synth-{socket.gethostname()}-{self.process.pid}"


def config(tmp_path: Path, name: str, *, db: str, emu, bucket: str, endpoint: str, **synth) -> Path:
    values: dict[str, Any] = {
        "data_dir": str(tmp_path / name),
        "listen": "127.0.0.1:0",
        "shutdown_grace_s": 5,
        "default_provider": "eleven",
        "providers": [
            {
                "name": "eleven",
                "kind": "elevenlabs",
                "api_key": "el-emulator-key",
                "base_url": emu.elevenlabs_url,
                "timeout_s": 10,
            }
        ],
        "storage": {
            "kind": "s3",
            "bucket": bucket,
            "prefix": S3_PREFIX,
            "endpoint_url": endpoint,
            "region": "us-east-1",
        },
        "auth": {
            "api_keys": [
                k.model_dump(mode="json") | {"key": k.key.get_secret_value()} for k in TEST_KEYS
            ]
        },
        "allocator": {
            "database_url": db,
            "maintenance_interval_s": None,
            "dispatch_interval_s": 0.1,
        },
        "synth": {"database_url": db, **synth},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    """Start ``voiceslot serve --only <service>`` processes; all killed afterwards."""
    started: list[Service] = []

    def start(name: str, service: str, config_path: Path) -> subprocess.Popen[str]:
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed below
        env = {
            **os.environ,
            **MotoS3.ENV,
            "VOICESLOT_SYNTH__ITEM_LEASE_S": str(ITEM_LEASE_S),
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "voiceslot", "--config", str(config_path), "serve"]
            + ["--only", service],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
        started.append(Service(name, process, 0, log))
        return process

    def ready(process: subprocess.Popen[str]) -> Service:
        service = next(s for s in started if s.process is process)
        service.port = read_port(process)
        return service

    yield start, ready
    for service in started:
        if service.process.poll() is None:
            service.process.kill()
        service.process.wait(timeout=30)
        service.log.close()


def sync_url(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


def running_items(db: str, job_id: str, holder: str) -> list[str]:
    with psycopg.connect(sync_url(db)) as conn:
        rows = conn.execute(
            "SELECT id FROM batch_items WHERE job_id = %s AND state = 'running' "
            "AND claimed_by = %s",
            (job_id, holder),
        ).fetchall()
    return [r[0] for r in rows]


def claimed_by(db: str, job_id: str) -> dict[str, str]:
    with psycopg.connect(sync_url(db)) as conn:
        rows = conn.execute(
            "SELECT id, claimed_by FROM batch_items WHERE job_id = %s", (job_id,)
        ).fetchall()
    return dict(rows)


async def test_two_worker_processes_one_killed_finish_the_brief_on_s3(
    spawn, tmp_path, postgres_url, sample_wav
):
    started = time.monotonic()
    start, ready = spawn
    with RejectingEmulator() as emu, MotoS3() as s3:
        bucket = s3.new_bucket()
        common = {"db": postgres_url, "emu": emu, "bucket": bucket, "endpoint": s3.endpoint}
        allocator = ready(start("allocator", "allocator", config(tmp_path, "allocator", **common)))

        async with grpc.aio.insecure_channel(allocator.target) as alloc_channel:
            md = auth(ADMIN_KEY)
            voice = await register(alloc_channel, md, sample_wav, name="brief voice")
            lease = (await ensure_ready(alloc_channel, md, voice.voice_id)).ready.lease
            await allocator_pb2_grpc.AllocatorServiceStub(alloc_channel).ReleaseLease(
                apb.ReleaseLeaseRequest(lease_id=lease.lease_id), metadata=md
            )

        synth_config = config(
            tmp_path,
            "synth",
            **common,
            allocator_target=allocator.target,
            allocator_api_key=ADMIN_KEY,
            batch_workers=2,
            item_max_attempts=10,
        )
        a_process = start("synth-a", "synth", synth_config)
        b_process = start("synth-b", "synth", synth_config)
        a, b = ready(a_process), ready(b_process)

        # From here on the provider is slow and unreliable.
        emu.state.faults.set_latency(PROVIDER_LATENCY_S)
        emu.state.faults.set_error_rate(ERROR_RATE, seed=20261121)

        items = [
            spb.BatchItemInput(
                name=f"item-{i:03d}",
                text=(
                    f"Item {i} is {REJECT_MARKER}." if i in REFUSED else f"Brief item number {i}."
                ),
            )
            for i in range(ITEMS)
        ]
        async with (
            grpc.aio.insecure_channel(a.target) as a_channel,
            grpc.aio.insecure_channel(b.target) as b_channel,
        ):
            synth_a = synthesizer_pb2_grpc.SynthesizerServiceStub(a_channel)
            # Created through the worker that will die: any replica serves any job.
            job = (
                await synthesizer_pb2_grpc.SynthesizerServiceStub(b_channel).CreateBatchJob(
                    spb.CreateBatchJobRequest(
                        voice_id=voice.voice_id,
                        items=items,
                        format=common_pb2.AudioFormat(
                            encoding=common_pb2.AUDIO_ENCODING_WAV, sample_rate_hz=RATE
                        ),
                        idempotency_key="crash-brief",
                    ),
                    metadata=md,
                )
            ).job
            assert job.total_items == ITEMS

            updates: list[spb.BatchJob] = []

            async def watch() -> None:
                call = synth_a.WatchBatchJob(
                    spb.WatchBatchJobRequest(job_id=job.job_id), metadata=md
                )
                async for update in call:
                    updates.append(update.job)

            watcher = asyncio.create_task(watch())

            # Kill B while it is rendering, past the first fifth of the job.
            deadline = time.monotonic() + 40
            victims: list[str] = []
            while not victims:
                assert time.monotonic() < deadline, "worker B never held an item mid-job"
                progressed = updates and updates[-1].progress >= 0.2
                if progressed and await asyncio.to_thread(
                    running_items, postgres_url, job.job_id, b.holder
                ):
                    b.process.send_signal(signal.SIGKILL)
                    b.process.wait(timeout=10)
                    victims = await asyncio.to_thread(
                        running_items, postgres_url, job.job_id, b.holder
                    )
                    assert victims, "B finished its items just before dying; no takeover"
                else:
                    await asyncio.sleep(0.02)
            killed_at = updates[-1].progress

            remaining = BUDGET_S - (time.monotonic() - started)
            await asyncio.wait_for(watcher, timeout=max(1.0, remaining - 10))
            final = updates[-1]

            # Progress: monotonic, never above 1, ending at exactly 1.
            progress = [u.progress for u in updates]
            assert progress == sorted(progress), progress
            assert all(0.0 <= p <= 1.0 for p in progress)
            assert final.progress == 1.0 and 0.2 <= killed_at < 1.0
            done = [u.succeeded_items + u.failed_items for u in updates]
            assert done == sorted(done)
            assert final.state == spb.BATCH_JOB_STATE_COMPLETED
            assert (final.succeeded_items, final.failed_items) == (
                ITEMS - len(REFUSED),
                len(REFUSED),
            )

            listed = await synth_a.GetBatchJob(
                spb.GetBatchJobRequest(job_id=job.job_id, include_items=True), metadata=md
            )
            by_name = {i.name: i for i in listed.items}
            failed = [i for i in listed.items if i.state == spb.BATCH_ITEM_STATE_FAILED]
            assert sorted(i.name for i in failed) == sorted(f"item-{n:03d}" for n in REFUSED)
            for item in failed:
                assert item.error.startswith("InvalidInput:"), item.error
                assert "cannot be spoken" in item.error
                assert not item.download_url
            succeeded = [i for i in listed.items if i.state == spb.BATCH_ITEM_STATE_SUCCEEDED]
            assert len(succeeded) == ITEMS - len(REFUSED)
            assert emu.rejected >= len(REFUSED)

            # The dead worker's items were finished by the survivor.
            owners = await asyncio.to_thread(claimed_by, postgres_url, job.job_id)
            for item_id in victims:
                item = next(i for i in listed.items if i.item_id == item_id)
                assert item.state in (spb.BATCH_ITEM_STATE_SUCCEEDED, spb.BATCH_ITEM_STATE_FAILED)
                assert owners[item_id] == a.holder and item.attempts >= 2
            # Transient provider errors happened and were retried away.
            retried = [i for i in succeeded if i.attempts >= 2 and i.item_id not in set(victims)]
            assert retried, "no transient failure was retried"
            assert emu.state.request_count(ELEVENLABS, Op.TTS_STREAM) > ITEMS

            # Exactly the stored items' files are in the bucket: none lost, none orphaned.
            keys = s3.keys(bucket, f"{S3_PREFIX}/audio/")
            expected = {f"{S3_PREFIX}/audio/{job.job_id}/{i.item_id}.wav" for i in succeeded}
            assert len(keys) == len(expected) and set(keys) == expected
            for name in ["item-000", "item-100", "item-199"]:
                item = by_name[name]
                assert item.download_url.startswith(s3.endpoint)
                data = b"".join(
                    [
                        c.chunk
                        async for c in synth_a.DownloadBatchItemAudio(
                            spb.DownloadBatchItemAudioRequest(
                                job_id=job.job_id, item_id=item.item_id
                            ),
                            metadata=md,
                        )
                    ]
                )
                audio, rate = sf.read(io.BytesIO(data))
                assert rate == RATE
                assert abs(audio.size / rate - item.audio_duration.ToNanoseconds() / 1e9) < 0.01

            # Another user sees nothing of it.
            with pytest.raises(grpc.aio.AioRpcError) as hidden:
                await synth_a.GetBatchJob(
                    spb.GetBatchJobRequest(job_id=job.job_id), metadata=auth(ALICE_KEY)
                )
            assert hidden.value.code() == grpc.StatusCode.NOT_FOUND

        assert a.process.poll() is None, "the survivor must still be serving"
        a.process.send_signal(signal.SIGTERM)
        assert a.process.wait(timeout=30) == 0
    assert time.monotonic() - started < BUDGET_S
