"""The wire fuzzer over a real socket against both services (issue 15), on a bounded
budget: hostile requests to every RPC the server lists by reflection, under every
credential case. Never INTERNAL or UNKNOWN, every answer within the deadline, every error
small, the server healthy afterwards.

``VOICESLOT_FUZZ_REQUESTS`` and ``VOICESLOT_FUZZ_SEED`` change the budget and the seed; a
finding names the seed and request number that replay it. The long mode is
``bench/wire_fuzz.py``.
"""

from __future__ import annotations

import os

import grpc
import pytest

from tests.conftest import ADMIN_KEY, ALICE_KEY, TEST_KEYS, auth
from tests.support import register
from voiceslot.config import AuthConfig
from voiceslot.testing import wire_fuzz
from voiceslot.testing.wire_fuzz import Credentials

REQUESTS = int(os.environ.get("VOICESLOT_FUZZ_REQUESTS", "800"))
SEED = int(os.environ.get("VOICESLOT_FUZZ_SEED", "15"))
# The fuzzer is one caller sending as fast as it can; the rate limit is not under test.
UNLIMITED = AuthConfig(api_keys=TEST_KEYS, rate_limit_per_second=1e6, rate_limit_burst=1_000_000)


@pytest.fixture
async def fuzz_channel(make_settings):
    from voiceslot.cli.runtime import Runtime

    rt = await Runtime(make_settings(auth=UNLIMITED)).start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{rt.port}") as channel:
            yield channel
    finally:
        await rt.stop()


async def test_reflection_lists_every_rpc_of_both_services(fuzz_channel):
    methods = {m.path for m in await wire_fuzz.discover(fuzz_channel)}
    assert "/voiceslot.v1.AllocatorService/RegisterVoice" in methods
    assert "/voiceslot.v1.SynthesizerService/SynthesizeStream" in methods
    assert "/grpc.health.v1.Health/List" in methods
    assert len(methods) >= 24


async def test_hostile_requests_to_every_rpc(fuzz_channel, sample_wav):
    voice = await register(fuzz_channel, auth(ALICE_KEY), sample_wav)
    methods = await wire_fuzz.discover(fuzz_channel)
    summary = await wire_fuzz.fuzz(
        fuzz_channel,
        methods,
        Credentials(admin=ADMIN_KEY, user=ALICE_KEY),
        requests=REQUESTS,
        seed=SEED,
        known=(voice.voice_id,),
        samples=(sample_wav,),
    )
    report = summary.as_json()
    assert summary.requests == REQUESTS
    assert set(summary.methods) == {m.path for m in methods}, "every RPC was called"
    assert summary.findings == [], report
    assert summary.healthy_after
