"""Idle reclaim driven by the operator: a slot idle past the threshold is freed only where
someone waits for one, and never while pinned; the VoiceSlot shows what happened."""

from __future__ import annotations

from tests.operator.conftest import IDLE_ADVANCE_S, eventually

RECLAIMS = {"RECLAIMED_IDLE", "RECLAIMED_FOR_BACKLOG", "RECLAIMED_BY_ADMIN"}


def live_remote_ids(stack) -> set[str]:
    return {v.voice_id for v in stack.emulator.state.live_voices("elevenlabs")}


async def test_idle_slot_with_backlog_is_reclaimed_and_its_voiceslot_updated(start_stack) -> None:
    # The dispatcher evicts for backlog too, on its own schedule. Here it only runs when
    # woken, and after the clock moves only the operator's idle-reclaim round wakes it
    # (after reclaiming): so the reclaim below is the one the operator drove.
    stack = await start_stack(
        capacity=1, dispatch_interval_s=3600, stuck_reset_interval_s=3600, drift_interval_s=3600
    )
    idle = await stack.allocator.ready_voice("idle")
    await stack.cluster.create("idle", idle.voice_id)
    await stack.observed("idle", "Ready")
    assert stack.cluster.status("idle")["remoteId"] == idle.provider_voice_id

    waiting = await stack.allocator.register("waiting")
    await stack.allocator.ensure(waiting)  # the only slot is taken: a backlog of one
    assert await stack.allocator.state(waiting) == "QUEUED"
    # The other maintenance loops ran their first round (at start) and now sleep.
    await eventually(
        lambda: stack.runs("reset_stuck") and stack.runs("reconcile"), what="first rounds"
    )

    stack.clock.advance(IDLE_ADVANCE_S)

    status = await stack.observed("idle", "Idle")
    assert "remoteId" not in status
    # Once the clock moved, the voice is both idle and wanted by the backlog: the operator's
    # idle round or a dispatcher round woken meanwhile may free it first (seen both ways
    # on a loaded machine). Either way the VoiceSlot says what the allocator recorded.
    # The phase comes from the voice's state, the condition from its events: a refresh
    # may show the one a moment before the other.
    await eventually(
        lambda: stack.cluster.condition("idle", "Reclaimed")["status"] == "True",
        what="Reclaimed condition",
    )
    reclaimed = stack.cluster.condition("idle", "Reclaimed")
    assert reclaimed["reason"] in ("ReclaimedIdle", "ReclaimedForBacklog"), reclaimed
    ready = stack.cluster.condition("idle", "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Idle")
    await stack.cluster.posted("idle", reclaimed["reason"])

    # The allocator says the same, the provider no longer has the copy, and the freed slot
    # went to the waiting voice.
    recorded = {"ReclaimedIdle": "RECLAIMED_IDLE", "ReclaimedForBacklog": "RECLAIMED_FOR_BACKLOG"}
    assert recorded[reclaimed["reason"]] in await stack.allocator.event_reasons(idle.voice_id)
    assert idle.provider_voice_id not in live_remote_ids(stack)
    await stack.allocator.wait_state(waiting, "READY")


async def test_idle_slot_without_backlog_is_kept(start_stack) -> None:
    stack = await start_stack(capacity=1)
    voice = await stack.allocator.ready_voice("lonely")
    await stack.cluster.create("lonely", voice.voice_id)
    await stack.observed("lonely", "Ready")

    stack.clock.advance(3600)  # idle for an hour, but nobody waits for a slot
    await stack.maintenance_rounds("reclaim_idle")
    await stack.maintenance_rounds("reclaim_idle")  # and the VoiceSlot refreshed meanwhile

    assert await stack.allocator.state(voice.voice_id) == "READY"
    assert not RECLAIMS & set(await stack.allocator.event_reasons(voice.voice_id))
    assert voice.provider_voice_id in live_remote_ids(stack)
    assert stack.cluster.status("lonely")["phase"] == "Ready"
    reclaimed = stack.cluster.condition("lonely", "Reclaimed")
    assert (reclaimed["status"], reclaimed["reason"]) == ("False", "NotReclaimed")
    ready = stack.cluster.condition("lonely", "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "SlotHeld")

    # Nothing changes any more: refreshes neither call the allocator nor write the object.
    writes = stack.cluster.writes("lonely")
    unchanged = stack.metrics.value("voiceslot_operator_reconciles_total", outcome="unchanged")
    await stack.maintenance_rounds("reclaim_idle", 3)
    assert stack.cluster.writes("lonely") == writes
    assert stack.metrics.value("voiceslot_operator_reconciles_total", outcome="unchanged") > (
        unchanged + 2
    )


async def test_pinned_slot_is_kept_despite_backlog_until_unpinned(start_stack) -> None:
    stack = await start_stack(capacity=1)
    voice = await stack.allocator.ready_voice("pinned")
    await stack.cluster.create("pinned", voice.voice_id, pinned=True)

    async def pinned_in_allocator() -> bool:
        return (await stack.allocator.voice(voice.voice_id)).pinned

    await eventually(pinned_in_allocator, what="spec.pinned applied with SetVoicePinned")
    await stack.observed("pinned", "Ready")

    waiting = await stack.allocator.register("waiting")
    await stack.allocator.ensure(waiting)
    # Past every threshold: the idle reclaim and the dispatcher's own eviction would both
    # take an unpinned voice now.
    stack.clock.advance(3600)
    await stack.maintenance_rounds("reclaim_idle")
    await stack.maintenance_rounds("reclaim_idle")

    assert await stack.allocator.state(voice.voice_id) == "READY"
    assert await stack.allocator.state(waiting) == "QUEUED"
    assert stack.cluster.status("pinned")["phase"] == "Ready"
    assert stack.cluster.condition("pinned", "Reclaimed")["status"] == "False"

    # Unpinning the VoiceSlot unpins the voice, and the waiting voice gets the slot.
    await stack.cluster.patch_spec("pinned", pinned=False)
    await eventually(
        lambda: stack.cluster.condition("pinned", "Reclaimed").get("status") == "True",
        what="the unpinned slot reclaimed",
    )
    assert not await pinned_in_allocator()
    assert stack.cluster.condition("pinned", "Reclaimed")["reason"] in {
        "ReclaimedIdle",
        "ReclaimedForBacklog",
    }
    await stack.cluster.posted("pinned", "Unpinned")
    await stack.allocator.wait_state(waiting, "READY")
    assert stack.cluster.get("pinned")["status"]["observedGeneration"] == 2
