"""The synthesizer's allocator client when its caller stops waiting while the allocator
is granting a lease (a barge-in, a live turn failing while its voice is being leased): the
answer arrives after the caller left, and the lease in it is released at once instead of
holding the voice until its TTL.

Between the client and the real allocator sits a forwarding gRPC server that holds the
allocator's answer back, as a slow network would: the lease is granted (the allocator's
own ``active_leases`` says so) before the client has heard of it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from synth_svc.allocator_client import AllocatorClient
from tests.conftest import ALICE_KEY, auth
from voiceslot.cli.runtime import Runtime
from voiceslot.v1 import allocator_pb2_grpc

from .conftest import active_leases, ready_voice
from .support import eventually

LEASE_TTL_S = 600.0
"""Far beyond every wait here: a lease that goes away was released, not lapsed."""
WAIT_S = 30.0
"""Generous: a loaded 2-core machine."""


class HoldingForwarder(allocator_pb2_grpc.AllocatorServiceServicer):
    """Forwards EnsureActiveVoice and ReleaseLease to the allocator, holding each
    EnsureActiveVoice answer until ``hold`` is lifted (``answered`` says one came)."""

    def __init__(self, upstream: grpc.aio.Channel) -> None:
        self.stub = allocator_pb2_grpc.AllocatorServiceStub(upstream)
        self.answered = asyncio.Event()
        self.hold = asyncio.Event()

    async def EnsureActiveVoice(self, request, context):  # noqa: N802 (gRPC's name)
        response = await self.stub.EnsureActiveVoice(request, metadata=caller(context))
        self.answered.set()
        await self.hold.wait()
        return response

    async def ReleaseLease(self, request, context):  # noqa: N802
        return await self.stub.ReleaseLease(request, metadata=caller(context))


def caller(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str], ...]:
    return tuple((k, v) for k, v in context.invocation_metadata() if k == "authorization")


Setup = tuple[grpc.aio.Channel, str, HoldingForwarder, AllocatorClient]


@pytest.fixture
async def held(
    start_runtime: Callable[..., Runtime],
    open_channel: Callable[[Runtime], grpc.aio.Channel],
    sample_wav: bytes,
) -> AsyncIterator[Setup]:
    """(channel to the allocator, a READY voice without leases, the forwarder, a client
    speaking to the allocator through it)."""
    channel = open_channel(await start_runtime(lease_ttl_s=LEASE_TTL_S))
    voice = await ready_voice(channel, auth(ALICE_KEY), sample_wav)
    forwarder = HoldingForwarder(channel)
    server = grpc.aio.server()
    allocator_pb2_grpc.add_AllocatorServiceServicer_to_server(forwarder, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = AllocatorClient(f"127.0.0.1:{port}", credential=lambda: ALICE_KEY, holder="test")
    try:
        yield channel, voice.voice_id, forwarder, client
    finally:
        forwarder.hold.set()
        await client.close()
        await server.stop(None)


async def leave_while_granted(setup: Setup) -> None:
    """Ask for a lease, and stop waiting once the allocator granted it but before its
    answer reached the client."""
    channel, voice_id, forwarder, client = setup
    acquiring = asyncio.create_task(client.acquire(voice_id, deadline=time.monotonic() + WAIT_S))
    await asyncio.wait_for(forwarder.answered.wait(), WAIT_S)
    assert await active_leases(channel, voice_id) == 1  # granted, at the allocator
    acquiring.cancel()
    with pytest.raises(asyncio.CancelledError):
        await acquiring
    forwarder.hold.set()  # the answer now arrives, with nobody waiting for it


async def test_a_lease_granted_after_its_caller_left_is_released(held: Setup) -> None:
    channel, voice_id, _, _ = held
    await leave_while_granted(held)
    await eventually(
        lambda: _none_active(channel, voice_id), timeout=WAIT_S, what="the lease released"
    )


async def test_close_waits_for_those_releases(held: Setup) -> None:
    channel, voice_id, _, client = held
    await leave_while_granted(held)
    await client.close()
    assert await active_leases(channel, voice_id) == 0


async def _none_active(channel: grpc.aio.Channel, voice_id: str) -> bool:
    return await active_leases(channel, voice_id) == 0
