"""The emulator as witness: its ground-truth ledger, the fault kinds the simulation relies
on (late success after a hang, an error after the work, list lag), and the debug endpoint
that serves the ledger. The ledger is checked as plain Python; the faults over real HTTP
through the real ElevenLabs and Cartesia adapters."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator

import pytest

from voiceslot.providers.base import CloneRequest
from voiceslot.providers.cartesia import CartesiaProvider
from voiceslot.providers.elevenlabs import ElevenLabsProvider
from voiceslot.providers.errors import ProviderError
from voiceslot.testing.emulator import (
    Account,
    EmulatorState,
    Fault,
    FaultKind,
    Op,
    ProviderEmulator,
    TruthLedger,
    parse_voiceslot_label,
)
from voiceslot.testing.samples import make_sample_wav

EL_KEY = "el-truth-key"


def test_labels_parse_into_voice_and_generation() -> None:
    assert parse_voiceslot_label("vs-", "vs-v_abc-def-g12") == ("v_abc-def", 12)
    assert parse_voiceslot_label("vs-", "Rachel") is None
    assert parse_voiceslot_label("vs-", "vs-v_abc") is None
    assert parse_voiceslot_label("other-", "vs-v_abc-g1") is None


def test_ledger_counts_copies_across_generations_and_instants_over_capacity() -> None:
    ledger = TruthLedger(label_prefix="vs-")
    ledger.set_capacity("elevenlabs", "k", 2)

    def make(name: str, remote: str) -> None:
        ledger.record("create", provider="elevenlabs", account="k", remote_id=remote, name=name)

    make("vs-v1-g1", "r1")
    make("vs-v1-g2", "r2")  # a second copy under a new generation is still a duplicate
    make("vs-v2-g1", "r3")  # three live: above the capacity of 2
    ledger.record("delete", provider="elevenlabs", account="k", remote_id="r1", name="vs-v1-g1")
    make("foreign", "r4")  # not ours: counts against the account, no voice id

    assert ledger.duplicated_voices() == {"v1": 2}
    assert ledger.duplicate_instants == 1
    assert ledger.over_capacity_instants[("elevenlabs", "k")] == 2
    assert ledger.capacity_ever_exceeded()
    assert ledger.account_peak[("elevenlabs", "k")] == 3
    assert [e.kind for e in ledger.events] == ["create", "create", "create", "delete", "create"]
    assert ledger.events[1].voice_id == "v1" and ledger.events[1].generation == 2
    assert ledger.events[1].voice_live_after == 2

    ledger.rebase()  # a new window over what is live now: v1 (r2), v2 (r3), foreign (r4)
    assert ledger.duplicated_voices() == {}
    assert not ledger.capacity_ever_exceeded()
    assert ledger.account_peak[("elevenlabs", "k")] == 3 and ledger.events == []
    snapshot = ledger.snapshot()
    assert snapshot["voices"]["v1"] == {"live": 1, "peak": 1}
    assert snapshot["accounts"][0]["capacity"] == 2


@pytest.fixture
def emulator() -> Iterator[ProviderEmulator]:
    state = EmulatorState(
        accounts=[Account.elevenlabs(EL_KEY, voice_limit=None), Account.cartesia("ca-truth")]
    )
    state.watch_capacity("elevenlabs", EL_KEY, 1)
    with ProviderEmulator(state=state) as emulator:
        yield emulator


def clone_request(label: str) -> CloneRequest:
    return CloneRequest(label=label, sample=make_sample_wav(seconds=1.0), language="en")


async def test_a_hang_succeeds_after_the_client_gave_up(emulator: ProviderEmulator) -> None:
    provider = ElevenLabsProvider(
        emulator.provider_config("elevenlabs", api_key=EL_KEY, timeout_s=0.3)
    )
    emulator.state.faults.inject(Fault(FaultKind.HANG, op=Op.CLONE, hang_s=0.8))
    with pytest.raises(ProviderError):
        await provider.clone(clone_request("vs-v1-g1"))
    assert emulator.state.live_voices() == []  # not yet: the provider is still "working"
    assert await asyncio.to_thread(
        emulator.state.wait_for, lambda s: len(s.live_voices()) == 1, 10.0
    ), "the hung clone never completed at the provider"
    await provider.aclose()


async def test_an_error_after_the_work_still_creates_the_voice(
    emulator: ProviderEmulator,
) -> None:
    provider = CartesiaProvider(emulator.provider_config("cartesia", api_key="ca-truth"))
    emulator.state.faults.inject(Fault(FaultKind.ERROR_AFTER_WORK, op=Op.CLONE, status=502))
    with pytest.raises(ProviderError):
        await provider.clone(clone_request("vs-v2-g1"))
    assert [v.name for v in emulator.state.live_voices()] == ["vs-v2-g1"]
    await provider.aclose()


async def test_list_results_lag_behind_creates(emulator: ProviderEmulator) -> None:
    provider = ElevenLabsProvider(emulator.provider_config("elevenlabs", api_key=EL_KEY))
    emulator.state.faults.set_list_lag(0.6)
    created = await provider.clone(clone_request("vs-v3-g1"))
    assert await provider.find_by_label("vs-v3-g1") is None  # not in the index yet
    await asyncio.sleep(0.8)
    found = await provider.find_by_label("vs-v3-g1")
    assert found is not None and found.provider_voice_id == created.provider_voice_id
    await provider.aclose()


def test_the_debug_endpoint_serves_the_truth_and_takes_faults(
    emulator: ProviderEmulator,
) -> None:
    state = emulator.state
    for name in ("vs-v1-g1", "vs-v1-g2"):  # two copies of one voice, capacity 1
        state.create_voice(state.authenticate("elevenlabs", EL_KEY), name=name, sample=b"x")
    with urllib.request.urlopen(emulator.debug_url + "/truth", timeout=10) as response:
        truth = json.loads(response.read())
    assert truth["duplicated_voices"] == {"v1": 2}
    assert truth["capacity_ever_exceeded"] is True
    assert [e["kind"] for e in truth["events"]] == ["create", "create"]
    assert truth["events"][0]["at"] <= time.monotonic()  # the same clock as the tests'

    body = json.dumps({"kind": "rate_limited", "op": "clone", "retry_after": 0.5}).encode()
    request = urllib.request.Request(
        emulator.debug_url + "/faults", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read()) == {"pending": 1}
    assert state.faults.pending == [Fault(FaultKind.RATE_LIMITED, op=Op.CLONE, retry_after=0.5)]
