"""The wire fuzzer over a real socket against both services (issue 15), on a bounded
budget: hostile requests to every RPC the server lists by reflection, under every
credential case. Never INTERNAL or UNKNOWN, every answer within the deadline, every error
small, the server healthy afterwards.

Two drivers of the one generator (``voiceslot.testing.wire_fuzz``): a seeded sweep that
gives every RPC its share (a finding names the seed and request number that replay it;
``VOICESLOT_FUZZ_REQUESTS`` and ``VOICESLOT_FUZZ_SEED`` change the budget and the seed),
and hypothesis, whose random source lets it shrink a failing request to a small one and
remembers it for the next run (``VOICESLOT_FUZZ_EXAMPLES``). The long mode is
``bench/wire_fuzz.py``.
"""

from __future__ import annotations

import os

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ADMIN_KEY, ALICE_KEY, TEST_KEYS, auth
from tests.support import register
from voiceslot.config import AuthConfig
from voiceslot.testing import wire_fuzz
from voiceslot.testing.wire_fuzz import Credentials

REQUESTS = int(os.environ.get("VOICESLOT_FUZZ_REQUESTS", "800"))
EXAMPLES = int(os.environ.get("VOICESLOT_FUZZ_EXAMPLES", "200"))
DEADLINE_S = 10.0
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


@settings(
    max_examples=EXAMPLES,
    deadline=None,  # calls over a socket on a loaded machine; the fuzzer judges time itself
    # One server for all examples, on purpose: its health after many is part of the test.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), rng=st.randoms(use_true_random=False))
async def test_hypothesis_finds_no_wrong_answer(fuzz_channel, sample_wav, data, rng):
    methods = await _methods(fuzz_channel)
    method = data.draw(st.sampled_from(methods), label="method")
    payloads, metadata = wire_fuzz.request_for(
        method, Credentials(admin=ADMIN_KEY, user=ALICE_KEY), rng, samples=(sample_wav,)
    )
    outcome = await wire_fuzz.call(fuzz_channel, method, payloads, metadata, deadline_s=DEADLINE_S)
    assert wire_fuzz.judge(outcome, deadline_s=DEADLINE_S) is None, (
        method.path,
        outcome.code.name,
        outcome.details[:300],
    )


_discovered: dict[int, list[wire_fuzz.Method]] = {}


async def _methods(channel: grpc.aio.Channel) -> list[wire_fuzz.Method]:
    """Reflection once per server, not once per example."""
    key = id(channel)
    if key not in _discovered:
        _discovered.clear()
        _discovered[key] = sorted(await wire_fuzz.discover(channel), key=lambda m: m.path)
    return _discovered[key]
