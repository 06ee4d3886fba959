"""An allocator replica SIGKILLed between the provider's clone and the database commit:
the remote voice exists, the database still says ALLOCATING. After a restart the stuck
sweeper adopts the remote voice by its label instead of cloning again.

The kill is real (a separate process, SIGKILL, no cleanup) and is placed by the test-only
hook in ``allocator_svc.lifecycle`` (``VOICESLOT_TESTONLY_SIGKILL_AFTER_CLONE``). The
provider is the emulator behind the real ElevenLabs adapter; it remembers every voice
ever created, so a second clone could not hide.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from allocator_svc.lifecycle import TEST_KILL_AFTER_CLONE_ENV
from tests.conftest import ADMIN_KEY, ALICE_KEY, auth
from tests.support import ensure_ready, register
from voiceslot.testing.emulator import Account, ProviderEmulator
from voiceslot.testing.samples import make_sample_wav
from voiceslot.v1 import allocator_pb2 as apb
from voiceslot.v1 import allocator_pb2_grpc, common_pb2

from .procs import LABEL_PREFIX, AllocatorProcess, write_config

KEY = "el-crash-key"
ALICE, ADMIN = auth(ALICE_KEY), auth(ADMIN_KEY)


@pytest.fixture
def emulator() -> Iterator[ProviderEmulator]:
    with ProviderEmulator(accounts=[Account.elevenlabs(KEY, voice_limit=None)]) as emulator:
        yield emulator


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def config(tmp_path: Path, emulator: ProviderEmulator, database_url: str | None, **alloc) -> Path:
    allocator = {"dispatch_interval_s": 0.05, "allocation_timeout_s": 1.0, **alloc}
    if database_url:
        allocator["database_url"] = database_url
    return write_config(
        tmp_path / "voiceslot.yaml",
        data_dir=tmp_path / "data",
        providers=[
            {
                "name": "el",
                "kind": "elevenlabs",
                "api_key": KEY,
                "base_url": emulator.elevenlabs_url,
                "capacity": 2,
            }
        ],
        allocator=allocator,
    )


async def crash_mid_allocation(
    tmp_path: Path, emulator: ProviderEmulator, cfg: Path
) -> tuple[str, str]:
    """Register a voice and ask for it on a replica that dies right after the clone.
    Returns (voice id, the remote voice id the provider made)."""
    doomed = AllocatorProcess(
        cfg, tmp_path / "doomed.log", env={TEST_KILL_AFTER_CLONE_ENV: "1"}
    ).start()
    try:
        doomed.wait_ready()
        async with grpc.aio.insecure_channel(doomed.target) as channel:
            voice = await register(channel, ALICE, make_sample_wav(seconds=1.5))
            stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
            answer = await stub.EnsureActiveVoice(
                apb.EnsureActiveVoiceRequest(voice_id=voice.voice_id), metadata=ALICE
            )
            assert not answer.HasField("ready")
        assert doomed.process is not None
        assert await asyncio.to_thread(doomed.process.wait, 30) == -signal.SIGKILL
    finally:
        doomed.stop()
    (remote,) = emulator.state.live_voices("elevenlabs")
    assert remote.name == f"{LABEL_PREFIX}{voice.voice_id}-g0"
    return voice.voice_id, remote.voice_id


async def test_the_sweeper_adopts_the_clone_of_a_killed_replica(
    tmp_path: Path, emulator: ProviderEmulator, database_url: str | None
):
    cfg = config(tmp_path, emulator, database_url, maintenance_interval_s=None)
    voice_id, remote_id = await crash_mid_allocation(tmp_path, emulator, cfg)

    restarted = AllocatorProcess(cfg, tmp_path / "restarted.log").start().wait_ready()
    try:
        async with grpc.aio.insecure_channel(restarted.target) as channel:
            stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
            get = apb.GetVoiceRequest(voice_id=voice_id)
            before = (await stub.GetVoice(get, metadata=ALICE)).voice
            assert before.state == common_pb2.VOICE_STATE_ALLOCATING
            assert before.generation == 0

            # Reset stuck only acts once the dead replica's dispatch lease (1 s) is over.
            deadline = time.monotonic() + 30
            sweep = apb.RunMaintenanceRequest(tasks=[apb.MAINTENANCE_TASK_RESET_STUCK])
            while True:
                (result,) = (await stub.RunMaintenance(sweep, metadata=ADMIN)).results
                if result.changed_voice_ids:
                    break
                assert time.monotonic() < deadline, "the stuck allocation was never reset"
                await asyncio.sleep(0.1)
            assert list(result.changed_voice_ids) == [voice_id]

            after = (await stub.GetVoice(get, metadata=ALICE)).voice
            assert after.state == common_pb2.VOICE_STATE_READY
            assert after.provider_voice_id == remote_id and after.generation == 0
            events = await stub.ListVoiceEvents(
                apb.ListVoiceEventsRequest(voice_id=voice_id), metadata=ALICE
            )
            assert events.events[0].reason == common_pb2.EVENT_REASON_ADOPTED
            ready = await ensure_ready(channel, ALICE, voice_id)
            assert ready.ready.provider_voice_id == remote_id
    finally:
        assert restarted.stop() == 0
    assert emulator.state.created_labels() == {f"{LABEL_PREFIX}{voice_id}-g0": 1}


async def test_the_maintenance_loop_adopts_it_unasked(tmp_path: Path, emulator: ProviderEmulator):
    cfg = config(tmp_path, emulator, None, maintenance_interval_s=0.3)
    voice_id, remote_id = await crash_mid_allocation(tmp_path, emulator, cfg)
    restarted = AllocatorProcess(cfg, tmp_path / "restarted.log").start().wait_ready()
    try:
        async with grpc.aio.insecure_channel(restarted.target) as channel:
            ready = await ensure_ready(channel, ALICE, voice_id, timeout=30)
            assert ready.ready.provider_voice_id == remote_id
    finally:
        assert restarted.stop() == 0
    assert emulator.state.created_labels() == {f"{LABEL_PREFIX}{voice_id}-g0": 1}
