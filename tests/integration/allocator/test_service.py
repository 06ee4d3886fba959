"""The allocator service with its dispatcher running, over an in-test provider: watchers
woken by the dispatcher's completions, quotas on the wire, deleting a voice that holds a
slot, and replicas starting together."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from allocator_svc.domain.states import VoiceState
from allocator_svc.records import Queued, ReadyOutcome
from allocator_svc.repository import AllocatorRepository
from allocator_svc.service import RegisterParams
from tests.conftest import ALICE_KEY, auth
from tests.support import register
from voiceslot.auth import Principal
from voiceslot.v1 import allocator_pb2 as apb
from voiceslot.v1 import allocator_pb2_grpc

from .conftest import T0, ServedAllocator

ALICE = Principal("alice", "user")
ADMIN = Principal("admin", "admin")


async def new_voice(served: ServedAllocator, sample: bytes, owner: str = "alice") -> str:
    voice, _ = await served.allocator.register_voice(
        ADMIN,
        RegisterParams(
            display_name="v", provider="", language="en", idempotency_key="", owner=owner
        ),
        sample,
    )
    return voice.id


async def next_state(watch, want: VoiceState, *, timeout: float = 10.0) -> None:
    async def until() -> None:
        async for voice in watch:
            if voice.state == want:
                return

    await asyncio.wait_for(until(), timeout)


async def test_watchers_hear_dispatcher_completions_at_once(
    serve_allocator: Callable, sample_wav: bytes
):
    served: ServedAllocator = await serve_allocator(capacity=1)
    served.fake.gate = asyncio.Event()
    voice_id = await new_voice(served, sample_wav)
    # An hour between polls: only the in-process notification can deliver the changes.
    watch = served.allocator.watch_voice(ALICE, voice_id, poll_s=3600)
    assert (await anext(watch)).state == VoiceState.REGISTERED
    assert isinstance(await served.allocator.ensure_active(ALICE, voice_id), Queued)
    await next_state(watch, VoiceState.ALLOCATING)
    served.fake.gate.set()  # the clone completes in a dispatcher task
    await next_state(watch, VoiceState.READY)
    await watch.aclose()


async def test_per_user_cap_is_resource_exhausted_with_quota_failure(
    serve_allocator: Callable, sample_wav: bytes
):
    served: ServedAllocator = await serve_allocator(capacity=1, per_user_max_queued=2)
    served.fake.gate = asyncio.Event()  # nothing completes: requests stay queued/in flight
    md = auth(ALICE_KEY)
    async with grpc.aio.insecure_channel(served.target) as channel:
        stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
        voices = [await register(channel, md, sample_wav) for _ in range(3)]
        for v in voices[:2]:
            ok = await stub.EnsureActiveVoice(
                apb.EnsureActiveVoiceRequest(voice_id=v.voice_id), metadata=md
            )
            assert ok.WhichOneof("outcome") in ("queued", "allocating")
        try:
            await stub.EnsureActiveVoice(
                apb.EnsureActiveVoiceRequest(voice_id=voices[2].voice_id), metadata=md
            )
            raise AssertionError("the third allocation was not refused")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            status = rpc_status.from_call(exc)
    failures = []
    for detail in status.details:
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
            failures.append(failure)
    (failure,) = failures
    assert [v.subject for v in failure.violations] == ["user:alice"]
    served.fake.gate.set()


async def test_deleting_a_ready_voice_keeps_its_slot_until_the_remote_copy_is_gone(
    serve_allocator: Callable, sample_wav: bytes
):
    served: ServedAllocator = await serve_allocator(capacity=1)
    allocator = served.allocator
    doomed, waiting = await new_voice(served, sample_wav), await new_voice(served, sample_wav)
    await allocator.ensure_active(ALICE, doomed)
    await asyncio.wait_for(wait_ready(allocator, doomed), 10)
    lease = await allocator.ensure_active(ALICE, doomed)
    assert isinstance(lease, ReadyOutcome)
    await allocator.release_lease(ALICE, lease.lease.id)

    served.fake.delete_gate = asyncio.Event()
    deleting = asyncio.create_task(allocator.delete_voice(ALICE, doomed, force=False))
    await asyncio.wait_for(served.fake.delete_started.wait(), 10)
    assert isinstance(await allocator.ensure_active(ALICE, waiting), Queued)
    # The remote copy still exists: the slot must stay taken, whatever the dispatcher does.
    for _ in range(5):
        await allocator.dispatcher.run_once("fake")
        (stats,) = await allocator.repo.provider_stats(allocator.clock.now(), name="fake")
        assert stats.used == 1 and len(served.fake.live) == 1
    served.fake.delete_gate.set()
    await deleting
    await asyncio.wait_for(wait_ready(allocator, waiting), 10)
    assert served.fake.peak == 1


async def wait_ready(allocator, voice_id: str) -> None:
    """Until the voice is READY, woken by the allocator's own change feed."""
    while True:
        changed = allocator.changes.waiter()
        if (await allocator.get_voice(ALICE, voice_id)).state == VoiceState.READY:
            return
        await changed.wait()


async def test_replicas_starting_together_all_start(
    make_repo: Callable[[], AllocatorRepository],
):
    replicas = [make_repo() for _ in range(4)]
    configs = [[("a", "cartesia", 3), ("b", "elevenlabs", 5 + i)] for i in range(4)]
    await asyncio.gather(
        *(r.upsert_providers(c, T0) for r, c in zip(replicas, configs, strict=True))
    )
    stats = await replicas[0].provider_stats(T0)
    assert [(s.name, s.capacity) for s in stats][0] == ("a", 3)
    assert stats[1].capacity in {5, 6, 7, 8}  # the last writer's configuration wins
