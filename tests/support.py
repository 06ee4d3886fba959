"""Helpers for tests that talk to the services over gRPC."""

from __future__ import annotations

import asyncio
import time

import grpc

from voiceslot.cli.client import register_requests as cli_register_requests
from voiceslot.v1 import allocator_pb2 as apb
from voiceslot.v1 import allocator_pb2_grpc, common_pb2

CHUNK = 64 * 1024
"""Smaller than the CLI's, so the test samples travel in several chunks."""


def register_requests(
    sample: bytes, *, name: str = "test voice", **metadata: str
) -> list[apb.RegisterVoiceRequest]:
    """The product's own RegisterVoice stream (``voiceslot.cli.client``), as a list."""
    meta = apb.RegisterVoiceMetadata(display_name=name, **metadata)
    return list(cli_register_requests(sample, meta, chunk=CHUNK))


async def register(
    channel: grpc.aio.Channel, md: tuple, sample: bytes, **metadata: str
) -> apb.Voice:
    stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
    response = await stub.RegisterVoice(iter(register_requests(sample, **metadata)), metadata=md)
    return response.voice


async def ensure_ready(
    channel: grpc.aio.Channel, md: tuple, voice_id: str, *, timeout: float = 60.0
) -> apb.EnsureActiveVoiceResponse:
    """EnsureActiveVoice until it answers ready (or fail after ``timeout``)."""
    stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
    deadline = time.monotonic() + timeout
    while True:
        response = await stub.EnsureActiveVoice(
            apb.EnsureActiveVoiceRequest(voice_id=voice_id), metadata=md
        )
        if response.HasField("ready"):
            return response
        assert response.voice.state != common_pb2.VOICE_STATE_FAILED, response.voice.last_error
        assert time.monotonic() < deadline, f"voice {voice_id} not ready: {response}"
        await asyncio.sleep(0.05)
