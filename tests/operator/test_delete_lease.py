"""Deleting a VoiceSlot whose voice is speaking (holds a live lease) waits for the lease
to end before reclaiming; ``voiceslot.io/force-delete: "true"`` reclaims at once; past
``delete_lease_wait_s`` the operator lets go without reclaiming (and unpins)."""

from __future__ import annotations

from tests.operator.conftest import eventually
from voiceslot_operator.deletion import FORCE_DELETE_ANNOTATION
from voiceslot_operator.finalizer import FINALIZER


async def test_deleting_under_a_live_lease_keeps_the_remote_voice_until_it_ends(
    start_stack,
) -> None:
    stack = await start_stack(capacity=2)
    voice = await stack.watched_voice("speaking")
    lease = await stack.allocator.lease(voice.voice_id)

    await stack.cluster.delete("speaking")
    blocked = await stack.condition("speaking", "DeletionBlocked", "True")
    assert blocked["reason"] == "LeaseActive"
    assert "force-delete" in blocked["message"]
    await stack.cluster.posted("speaking", "DeletionWaitsForLease")
    # Try after try, it keeps waiting: the VoiceSlot stays, the remote voice too.
    await stack.counted("deletions_total", verdict="wait_lease")
    held = stack.cluster.get("speaking")
    assert held is not None and FINALIZER in held["metadata"]["finalizers"]
    assert await stack.allocator.state(voice.voice_id) == "READY"
    assert voice.provider_voice_id in stack.live_remote_ids()

    await stack.allocator.release(lease)
    await eventually(lambda: stack.cluster.get("speaking") is None, what="the VoiceSlot gone")
    assert await stack.allocator.state(voice.voice_id) == "IDLE"
    assert voice.provider_voice_id not in stack.live_remote_ids()
    await stack.cluster.posted("speaking", "SlotReclaimed")


async def test_force_annotation_reclaims_under_a_lease(start_stack) -> None:
    stack = await start_stack(capacity=2)
    voice = await stack.watched_voice("forced", annotations={FORCE_DELETE_ANNOTATION: "true"})
    await stack.allocator.lease(voice.voice_id)

    await stack.cluster.delete("forced")
    await eventually(lambda: stack.cluster.get("forced") is None, what="the VoiceSlot gone")
    assert await stack.allocator.state(voice.voice_id) == "IDLE"
    assert voice.provider_voice_id not in stack.live_remote_ids()
    assert stack.counter("deletions_total", verdict="wait_lease") == 0


async def test_a_lease_outliving_the_wait_lets_go_without_reclaiming(start_stack) -> None:
    stack = await start_stack(capacity=2, delete_lease_wait_s=2.0)
    voice = await stack.watched_voice("endless", pinned=True)

    async def pinned() -> bool:
        return (await stack.allocator.voice(voice.voice_id)).pinned

    await eventually(pinned, what="pinned")
    await stack.allocator.lease(voice.voice_id)

    await stack.cluster.delete("endless")
    await stack.condition("endless", "DeletionBlocked", "True")
    await eventually(lambda: stack.cluster.get("endless") is None, what="the VoiceSlot gone")
    await stack.cluster.posted("endless", "ReclaimAbandoned")
    # Still speaking: the remote voice stays; unpinned, so idle reclaim can free it later.
    assert await stack.allocator.state(voice.voice_id) == "READY"
    assert voice.provider_voice_id in stack.live_remote_ids()
    assert not await pinned()
