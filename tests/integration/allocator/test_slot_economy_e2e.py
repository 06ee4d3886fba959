"""End to end: a short request trace replayed through real allocator processes on
PostgreSQL against the provider emulator spends the clones the bench's replay of the same
trace and policy predicts (within 10 %).

Two replicas (OS processes, ``voiceslot serve --only allocator``) share one PostgreSQL
database; clients fire the trace's requests at their offsets, alternating replicas, as a
synthesizer would: ``EnsureActiveVoice`` until ready, hold the lease for the request's
time, release it. The clones are counted where they happen, at the emulator (every remote
voice ever created). The bench (``bench/slot_economy``) replays the same trace against
the same policy object the replicas run (``default_reclaim_policy`` of the same
settings). Trace time is real time here: requests a few tenths of a second apart, so the
policy's statistics (session gap, decay) see the same timeline on both sides.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from allocator_svc.domain.adaptive import Adaptive
from allocator_svc.service import default_reclaim_policy
from tests.conftest import ALICE_KEY, auth
from tests.support import register
from voiceslot.config import AllocatorConfig
from voiceslot.testing.emulator import Account, ProviderEmulator
from voiceslot.testing.samples import make_sample_wav
from voiceslot.v1 import allocator_pb2 as apb
from voiceslot.v1 import allocator_pb2_grpc

from .procs import AllocatorProcess, write_config

BENCH = Path(__file__).resolve().parents[3] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from slot_economy.adapters import ProductDefault  # noqa: E402
from slot_economy.policies import AdmitContext, Wait  # noqa: E402
from slot_economy.replay import replay  # noqa: E402
from slot_economy.traces import Request, Trace  # noqa: E402

pytestmark = pytest.mark.postgres

KEY = "cartesia-e2e-key"
ALICE = auth(ALICE_KEY)
SLOTS = 6
VOICES = 20
REQUESTS = 180
SPACING_S = 0.4
"""Mean gap between requests: long against a clone and a delete at the emulator (a few
ms, plus dispatch rounds of 50 ms), so the real queue is as short as the replay's."""
LEASE_S = 0.2
"""How long each request holds its lease: long against a call's round trip, so the
replicas see the voice leased about as long as the replay does."""
SETTINGS = {
    "dispatch_interval_s": 0.05,
    "maintenance_interval_s": None,  # no idle reclaim: only the policy frees slots
    "idle_reclaim_after_s": 0.5,  # the residency: 0.5 s (min(10 s, this))
    "reclaim_max_wait_s": 0.0,  # never wait: timing-sensitive waits would blur the count
    "default_lease_ttl_s": 5.0,
}
CALL_TIMEOUT_S = 60.0


def make_trace(seed: int = 11) -> list[Request]:
    """Zipf(1.0) voices, a few in short bursts: independent and session-like traffic."""
    rng = random.Random(seed)
    weights = [1.0 / (k + 1) for k in range(VOICES)]
    out: list[Request] = []
    t = 1.0
    while len(out) < REQUESTS:
        voice = rng.choices(range(VOICES), weights)[0]
        burst = 3 if rng.random() < 0.15 else 1
        for _ in range(burst):
            out.append(Request(round(t, 3), voice, voice, LEASE_S))
            t += rng.expovariate(1.0 / SPACING_S) + 0.05
    return out[:REQUESTS]


class Counting(ProductDefault):
    """The bench's driver, counting clones per voice (for the failure message)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clones: Counter[int] = Counter()

    def admit(self, voice: int, ctx: AdmitContext) -> int | None | Wait:
        out = super().admit(voice, ctx)
        if not isinstance(out, Wait):
            self.clones[voice] += 1
        return out


@pytest.fixture
def emulator() -> Iterator[ProviderEmulator]:
    with ProviderEmulator(accounts=[Account.cartesia(KEY, voice_limit=None)]) as emulator:
        yield emulator


async def use(stub: allocator_pb2_grpc.AllocatorServiceStub, voice_id: str) -> None:
    """One request: EnsureActiveVoice until ready, hold the lease, release it."""
    deadline = time.monotonic() + CALL_TIMEOUT_S
    while True:
        answer = await stub.EnsureActiveVoice(
            apb.EnsureActiveVoiceRequest(voice_id=voice_id), metadata=ALICE, timeout=30
        )
        if answer.HasField("ready"):
            break
        assert time.monotonic() < deadline, f"{voice_id} never became ready: {answer}"
        await asyncio.sleep(0.03)
    await asyncio.sleep(LEASE_S)
    await stub.ReleaseLease(
        apb.ReleaseLeaseRequest(lease_id=answer.ready.lease.lease_id), metadata=ALICE, timeout=30
    )


async def test_clones_at_the_emulator_match_the_benchs_replay(
    tmp_path: Path, emulator: ProviderEmulator, postgres_url: str
):
    trace = make_trace()
    config = write_config(
        tmp_path / "voiceslot.yaml",
        data_dir=tmp_path / "data",
        providers=[
            {
                "name": "sonic",
                "kind": "cartesia",
                "api_key": KEY,
                "base_url": emulator.cartesia_url,
                "capacity": SLOTS,
            }
        ],
        allocator={"database_url": postgres_url, **SETTINGS},
    )
    first = AllocatorProcess(config, tmp_path / "a.log").start()
    replicas = [first]
    try:
        first.wait_ready()  # migrates before the second one starts
        second = AllocatorProcess(config, tmp_path / "b.log").start()
        replicas.append(second)
        second.wait_ready()
        channels = [grpc.aio.insecure_channel(r.target) for r in replicas]
        stubs = [allocator_pb2_grpc.AllocatorServiceStub(c) for c in channels]
        sample = make_sample_wav(seconds=1.0)
        registered = time.monotonic()
        ids = [(await register(channels[0], ALICE, sample)).voice_id for _ in range(VOICES)]
        start = time.monotonic()

        async def fire(i: int, r: Request) -> None:
            await asyncio.sleep(max(0.0, start + r.t - time.monotonic()))
            await use(stubs[i % 2], ids[r.voice])

        await asyncio.wait_for(
            asyncio.gather(*(fire(i, r) for i, r in enumerate(trace))),
            timeout=trace[-1].t + 2 * CALL_TIMEOUT_S,
        )
        for c in channels:
            await c.close()
    finally:
        for r in replicas:
            r.stop()

    labels = emulator.state.created_labels()
    at_emulator = sum(labels.values())
    real = Counter({i: sum(n for lb, n in labels.items() if v in lb) for i, v in enumerate(ids)})
    policy = default_reclaim_policy(AllocatorConfig(**SETTINGS))
    assert isinstance(policy, Adaptive)
    # The allocator's rate window opens when the voices were registered.
    driver = Counting(SLOTS, policy=policy, since=registered - start)
    predicted = replay(Trace("e2e", trace, SLOTS), driver).clones
    # Sanity: the trace really made the policy choose (well over one clone per voice).
    assert predicted > 2 * VOICES
    assert abs(at_emulator - predicted) <= 0.10 * predicted, (
        f"emulator counted {at_emulator} clones, the bench's replay {predicted}; by voice "
        f"(trace index: emulator, replay): "
        f"{ {i: (real[i], driver.clones[i]) for i in range(VOICES)} }"
    )
