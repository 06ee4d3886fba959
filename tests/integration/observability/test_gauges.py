"""The allocator keeps its state gauges current by itself: after activity, the Prometheus
registry shows backlog, oldest wait, slots and breaker without any admin call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from tests.conftest import ADMIN_KEY, ALICE_KEY, auth
from tests.support import ensure_ready, register
from voiceslot.config import AllocatorConfig, Settings
from voiceslot.v1 import allocator_pb2 as apb
from voiceslot.v1 import allocator_pb2_grpc

GAUGE_INTERVAL_S = 0.1


def gauge(name: str, provider: str = "local") -> float | None:
    return REGISTRY.get_sample_value(name, {"provider": provider})


async def until(check: Callable[[], bool], *, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "gauges never showed the expected values"
        await asyncio.sleep(0.05)


async def refreshed() -> None:
    """Until the allocator has refreshed its gauges after now (the registry is the
    process's: values an earlier test left must not pass for this one's)."""
    now = time.time()
    await until(
        lambda: (
            (REGISTRY.get_sample_value("voiceslot_gauges_refreshed_timestamp_seconds") or 0) > now
        )
    )


@pytest.fixture
async def one_slot(make_settings: Callable[..., Settings]) -> AsyncIterator[Any]:
    from voiceslot.cli.runtime import Runtime

    settings = make_settings(
        capacity=1,
        allocator=AllocatorConfig(
            maintenance_interval_s=None,
            dispatch_interval_s=0.1,
            gauge_interval_s=GAUGE_INTERVAL_S,
        ),
    )
    rt = await Runtime(settings).start()
    try:
        yield rt
    finally:
        await rt.stop()


async def test_gauges_follow_activity_without_admin_calls(one_slot, sample_wav):
    md = auth(ALICE_KEY)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{one_slot.port}") as channel:
        stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
        held = await register(channel, md, sample_wav, name="held")
        waiting = await register(channel, md, sample_wav, name="waiting")
        # The one slot is taken by a leased voice, so the second one waits in the queue.
        await ensure_ready(channel, md, held.voice_id)
        queued = await stub.EnsureActiveVoice(
            apb.EnsureActiveVoiceRequest(voice_id=waiting.voice_id), metadata=md
        )
        assert queued.HasField("queued")

        await refreshed()
        assert gauge("voiceslot_queue_depth") == 1
        assert (gauge("voiceslot_queue_oldest_age_seconds") or 0) > 0
        assert gauge("voiceslot_slots_used") == 1
        assert gauge("voiceslot_slots_capacity") == 1
        assert gauge("voiceslot_breaker_open") == 0
        assert gauge("voiceslot_stuck_allocations") == 0
        # The local engine has no add/edit cap: unknown is absent, never a false zero.
        assert gauge("voiceslot_add_edit_remaining") is None
        # Ages keep growing between refreshes while the request waits.
        first_age = gauge("voiceslot_queue_oldest_age_seconds") or 0
        await until(lambda: (gauge("voiceslot_queue_oldest_age_seconds") or 0) > first_age)

        # The waiting request is withdrawn with its voice: the backlog empties again.
        await stub.DeleteVoice(apb.DeleteVoiceRequest(voice_id=waiting.voice_id), metadata=md)
        await refreshed()
        assert gauge("voiceslot_queue_depth") == 0
        assert gauge("voiceslot_queue_oldest_age_seconds") == 0


async def test_reconciliation_drift_is_counted_by_kind(one_slot, sample_wav):
    md = auth(ALICE_KEY)
    labels = {"provider": "local", "kind": "remote_missing"}
    before = REGISTRY.get_sample_value("voiceslot_reconcile_drift_total", labels) or 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{one_slot.port}") as channel:
        stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
        voice = await register(channel, md, sample_wav)
        ready = await ensure_ready(channel, md, voice.voice_id)
        await stub.ReleaseLease(
            apb.ReleaseLeaseRequest(lease_id=ready.ready.lease.lease_id), metadata=md
        )
        # The provider loses the copy behind our back.
        await one_slot.providers["local"].delete(ready.ready.provider_voice_id)
        await stub.RunMaintenance(
            apb.RunMaintenanceRequest(tasks=[apb.MAINTENANCE_TASK_RECONCILE]),
            metadata=auth(ADMIN_KEY),
        )
    after = REGISTRY.get_sample_value("voiceslot_reconcile_drift_total", labels)
    assert after == before + 1
