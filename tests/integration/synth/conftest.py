"""Fixtures for the synthesizer's integration tests: both services in this process on
loopback gRPC, speaking through the ElevenLabs emulator (whose streams can be held, slowed
and broken on cue), on SQLite unless a test asks for PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest

from tests.conftest import ADMIN_KEY, auth
from tests.support import ensure_ready, register
from voiceslot.cli.runtime import Runtime
from voiceslot.config import AllocatorConfig, Settings
from voiceslot.v1 import allocator_pb2 as apb
from voiceslot.v1 import allocator_pb2_grpc

from .support import ELEVEN, MotoS3, RejectingEmulator


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[RejectingEmulator]:
    with RejectingEmulator() as emu:
        yield emu


@pytest.fixture
def emulator(emulator_server: RejectingEmulator) -> Iterator[RejectingEmulator]:
    """The session's emulator, forgotten before and after each test (voices, faults,
    latency, held streams)."""
    emulator_server.reset()
    yield emulator_server
    emulator_server.state.release_streams()
    emulator_server.reset()


@pytest.fixture
def emulator_settings(
    make_settings: Callable[..., Settings], emulator: RejectingEmulator
) -> Callable[..., Settings]:
    """Settings whose only provider is the emulated ElevenLabs account ``eleven``.
    ``lease_ttl_s`` and ``capacity`` are the knobs these tests turn; the rest as
    ``make_settings`` takes them."""

    def factory(
        *,
        lease_ttl_s: float = 60.0,
        capacity: int = 5,
        idle_reclaim_after_s: float = 900.0,
        reclaim_max_wait_s: float = 30.0,
        **kw: Any,
    ) -> Settings:
        return make_settings(
            providers=(emulator.provider_config("elevenlabs", name=ELEVEN, capacity=capacity),),
            default_provider=ELEVEN,
            allocator=AllocatorConfig(
                database_url=kw.pop("database_url", None),
                maintenance_interval_s=None,
                dispatch_interval_s=0.1,
                default_lease_ttl_s=lease_ttl_s,
                idle_reclaim_after_s=idle_reclaim_after_s,
                reclaim_max_wait_s=reclaim_max_wait_s,
            ),
            **kw,
        )

    return factory


@pytest.fixture
async def start_runtime(
    emulator_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Awaitable[Runtime]]]:
    """Start both services on the emulator with the given settings; stopped after."""
    started: list[Runtime] = []

    async def start(**kw: Any) -> Runtime:
        rt = await Runtime(emulator_settings(**kw)).start()
        started.append(rt)
        return rt

    yield start
    for rt in reversed(started):
        await rt.stop()


@pytest.fixture
async def open_channel() -> AsyncIterator[Callable[[Runtime], grpc.aio.Channel]]:
    channels: list[grpc.aio.Channel] = []

    def open_(rt: Runtime) -> grpc.aio.Channel:
        ch = grpc.aio.insecure_channel(f"127.0.0.1:{rt.port}")
        channels.append(ch)
        return ch

    yield open_
    for ch in channels:
        await ch.close()


async def ready_voice(
    channel: grpc.aio.Channel, md: tuple, sample: bytes, **metadata: str
) -> apb.Voice:
    """A registered voice, cloned and READY (its ensure lease released again, so only the
    synthesizer's own leases count from here on)."""
    voice = await register(channel, md, sample, **metadata)
    ready = await ensure_ready(channel, md, voice.voice_id)
    stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
    await stub.ReleaseLease(
        apb.ReleaseLeaseRequest(lease_id=ready.ready.lease.lease_id), metadata=md
    )
    return voice


async def active_leases(channel: grpc.aio.Channel, voice_id: str) -> int:
    stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
    voice = await stub.GetVoice(apb.GetVoiceRequest(voice_id=voice_id), metadata=auth(ADMIN_KEY))
    return voice.voice.active_leases


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    with MotoS3() as s3:
        yield s3


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in MotoS3.ENV.items():
        monkeypatch.setenv(name, value)
