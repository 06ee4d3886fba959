"""Stuck allocations and drift, driven by the operator's maintenance rounds and shown on
the VoiceSlot: conditions while it lasts, how it ended, and Kubernetes events."""

from __future__ import annotations

from tests.operator.conftest import ALLOCATION_TIMEOUT_S, eventually
from voiceslot.config import AllocatorConfig
from voiceslot.providers.elevenlabs import ElevenLabsProvider
from voiceslot.testing.emulator import Fault, FaultKind, Op

CLONE_SETTLE_S = AllocatorConfig().clone_settle_s


def live_remote_ids(stack) -> set[str]:
    return {v.voice_id for v in stack.emulator.state.live_voices("elevenlabs")}


async def test_allocation_stuck_past_its_timeout_is_reset(start_stack) -> None:
    stack = await start_stack(capacity=2)
    # The first two clones hang (as if their dispatcher had died mid-call); the third works.
    stack.emulator.state.faults.inject(Fault(FaultKind.HANG, op=Op.CLONE, times=2, hang_s=120))
    voice_id = await stack.allocator.register("stuck")
    await stack.cluster.create("stuck", voice_id)
    await stack.observed("stuck", "Registered")

    await stack.allocator.ensure(voice_id)
    await stack.allocator.wait_state(voice_id, "ALLOCATING")
    await stack.observed("stuck", "Allocating")
    # In flight, but not past its timeout: left alone.
    await stack.maintenance_rounds("reset_stuck")
    assert await stack.allocator.state(voice_id) == "ALLOCATING"
    assert stack.cluster.condition("stuck", "Stuck")["status"] == "False"

    stack.clock.advance(ALLOCATION_TIMEOUT_S + 1)
    # Reset and re-queued; the second attempt hangs too, so the VoiceSlot shows it stuck.
    stuck = await eventually(
        lambda: (c := stack.cluster.condition("stuck", "Stuck")).get("status") == "True" and c,
        what="Stuck=True",
    )
    assert stuck["reason"] == "StuckReset"
    await stack.cluster.posted("stuck", "StuckReset")
    assert (await stack.allocator.voice(voice_id)).generation == 0
    # The retry waits for a late copy to show up at the provider (clone_settle_s) first.
    stack.clock.advance(CLONE_SETTLE_S + 1)
    await stack.observed("stuck", "Allocating")

    stack.clock.advance(ALLOCATION_TIMEOUT_S + 1)

    async def reset_twice() -> bool:
        return (await stack.allocator.event_reasons(voice_id)).count("STUCK_RESET") == 2

    await eventually(reset_twice, what="the second reset")
    stack.clock.advance(CLONE_SETTLE_S + 1)
    status = await stack.observed("stuck", "Ready")
    recovered = stack.cluster.condition("stuck", "Stuck")
    assert (recovered["status"], recovered["reason"]) == ("False", "Recovered")
    assert stack.cluster.condition("stuck", "Ready")["status"] == "True"

    voice = await stack.allocator.voice(voice_id)
    assert voice.generation == 0
    assert status["remoteId"] == voice.provider_voice_id
    assert status["remoteId"] in live_remote_ids(stack)
    # Two resets, three attempts; one Kubernetes event per reset (the second may be noted
    # a refresh after the voice turned ready).
    assert (await stack.allocator.event_reasons(voice_id)).count("ALLOCATION_STARTED") == 3
    await eventually(
        lambda: stack.cluster.event_reasons("stuck").count("StuckReset") == 2,
        what="a StuckReset event per reset",
    )
    await stack.maintenance_rounds("reset_stuck")
    assert stack.cluster.event_reasons("stuck").count("StuckReset") == 2


async def test_an_allocation_past_its_timeout_shows_stuck_before_any_reset(start_stack) -> None:
    # The operator's threshold is short and the allocator's clock does not move, so the
    # allocator never resets it: Stuck comes from the allocator's record of how long the
    # voice has been Allocating, nothing else.
    stack = await start_stack(capacity=2, stuck_after_s=1.0)
    stack.emulator.state.faults.inject(Fault(FaultKind.HANG, op=Op.CLONE, times=1, hang_s=120))
    voice_id = await stack.allocator.register("overdue")
    await stack.cluster.create("overdue", voice_id)
    await stack.observed("overdue", "Registered")
    await stack.allocator.ensure(voice_id)
    await stack.observed("overdue", "Allocating")
    stuck = await stack.condition("overdue", "Stuck", "True")
    assert stuck["reason"] == "AllocationOverdue"
    assert await stack.allocator.state(voice_id) == "ALLOCATING"
    assert "STUCK_RESET" not in await stack.allocator.event_reasons(voice_id)


async def test_remote_voice_deleted_behind_our_back_is_drifted_then_repaired(start_stack) -> None:
    stack = await start_stack(capacity=2)
    voice = await stack.watched_voice("drifty")
    assert stack.cluster.condition("drifty", "Drifted")["status"] == "False"

    # The repair's clone takes a few seconds, long enough to see the drift on the VoiceSlot.
    stack.emulator.state.faults.inject(Fault(FaultKind.HANG, op=Op.CLONE, times=1, hang_s=3))
    # Someone deletes the clone at the provider (its dashboard, another tool).
    outsider = ElevenLabsProvider(stack.emulator.provider_config("elevenlabs", name="outsider"))
    try:
        await outsider.delete(voice.provider_voice_id)
    finally:
        await outsider.aclose()
    # Past the time a provider's listing may lag its creates (clone_settle_s).
    stack.clock.advance(11)

    drifted = await eventually(
        lambda: (c := stack.cluster.condition("drifty", "Drifted")).get("status") == "True" and c,
        what="Drifted=True",
    )
    assert drifted["reason"] == "DriftRemoteMissing"
    assert voice.provider_voice_id in drifted["message"]
    await stack.cluster.posted("drifty", "DriftRemoteMissing")

    # Repaired: cloned again, under a new remote id.
    await eventually(
        lambda: stack.cluster.condition("drifty", "Drifted").get("reason") == "Repaired",
        what="Drifted repaired",
    )
    status = stack.cluster.status("drifty")
    assert status["phase"] == "Ready"
    assert stack.cluster.condition("drifty", "Drifted")["status"] == "False"
    assert status["remoteId"] != voice.provider_voice_id
    assert status["remoteId"] in live_remote_ids(stack)
    assert "DRIFT_REMOTE_MISSING" in await stack.allocator.event_reasons(voice.voice_id)
    assert (await stack.allocator.voice(voice.voice_id)).generation == 1
    assert stack.metrics.value("voiceslot_operator_drift_repairs_total") == 1


async def test_spec_provider_that_differs_shows_as_drifted(start_stack) -> None:
    stack = await start_stack(capacity=2)
    voice = await stack.allocator.ready_voice("elsewhere")
    await stack.cluster.create("elsewhere", voice.voice_id, provider="cartesia")
    await stack.observed("elsewhere", "Ready")
    drifted = await eventually(
        lambda: (
            (c := stack.cluster.condition("elsewhere", "Drifted")).get("status") == "True" and c
        ),
        what="Drifted=True",
    )
    assert drifted["reason"] == "ProviderMismatch"
    assert stack.cluster.status("elsewhere")["provider"] == "eleven"

    await stack.cluster.patch_spec("elsewhere", provider="eleven")
    await eventually(
        lambda: stack.cluster.condition("elsewhere", "Drifted").get("reason") == "InSync",
        what="Drifted cleared",
    )
