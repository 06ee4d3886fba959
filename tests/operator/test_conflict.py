"""One VoiceSlot per voice: the oldest owns it; later ones get ``Conflict`` and are
ignored; deleting a duplicate never touches the voice, and deleting the owner while a
duplicate stands hands the voice over instead of reclaiming it.

``creationTimestamp`` has second precision, so VoiceSlots created within one second tie;
the names are chosen so that the tie-break (namespace/name) agrees with creation order.
"""

from __future__ import annotations

from tests.operator.conftest import NAMESPACE, eventually


async def test_a_duplicate_gets_conflict_and_never_touches_the_voice(start_stack) -> None:
    stack = await start_stack(capacity=2)
    voice = await stack.watched_voice("a-first")
    await stack.cluster.create("b-second", voice.voice_id, pinned=True)

    conflict = await stack.condition("b-second", "Conflict", "True")
    assert conflict["reason"] == "DuplicateVoiceSlot"
    assert f"{NAMESPACE}/a-first" in conflict["message"]
    ready = stack.cluster.condition("b-second", "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Conflict")
    await stack.cluster.posted("b-second", "DuplicateVoiceSlot")

    # Refresh after refresh the duplicate's pin is not applied, and the pin does not flip.
    await stack.counted("ignored_voiceslots_total", reason="conflict")
    assert not (await stack.allocator.voice(voice.voice_id)).pinned
    assert "PINNED" not in await stack.allocator.event_reasons(voice.voice_id)
    assert stack.cluster.condition("a-first", "Conflict")["status"] == "False"
    assert stack.cluster.condition("a-first", "Ready")["status"] == "True"
    assert stack.cluster.event_reasons("b-second").count("DuplicateVoiceSlot") == 1

    # Deleting the duplicate leaves the voice and its slot alone.
    await stack.cluster.delete("b-second")
    await eventually(lambda: stack.cluster.get("b-second") is None, what="duplicate gone")
    assert await stack.allocator.state(voice.voice_id) == "READY"
    assert voice.provider_voice_id in stack.live_remote_ids()
    assert "RECLAIMED_BY_ADMIN" not in await stack.allocator.event_reasons(voice.voice_id)


async def test_deleting_the_owner_hands_the_voice_to_the_duplicate(start_stack) -> None:
    stack = await start_stack(capacity=2)
    voice = await stack.watched_voice("a-owner")
    await stack.cluster.create("b-heir", voice.voice_id, pinned=True)
    await stack.condition("b-heir", "Conflict", "True")

    await stack.cluster.delete("a-owner")
    await eventually(lambda: stack.cluster.get("a-owner") is None, what="the owner gone")
    await stack.cluster.posted("a-owner", "HandedOver")
    # The heir owns the voice now: its conflict clears and its pin is applied.
    cleared = await stack.condition("b-heir", "Conflict", "False")
    assert cleared["reason"] == "NoConflict"

    async def pinned() -> bool:
        return (await stack.allocator.voice(voice.voice_id)).pinned

    await eventually(pinned, what="the heir's pin applied")
    assert await stack.allocator.state(voice.voice_id) == "READY"
    assert voice.provider_voice_id in stack.live_remote_ids()
    assert "RECLAIMED_BY_ADMIN" not in await stack.allocator.event_reasons(voice.voice_id)
    await stack.observed("b-heir", "Ready")
