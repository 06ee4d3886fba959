"""Mirroring: every slot the allocator lists gets a VoiceSlot (unless one stands for its
voice already), and a mirrored VoiceSlot goes when its voice is deleted."""

from __future__ import annotations

from tests.operator.conftest import NAMESPACE, PROVIDER, eventually
from voiceslot_operator.mirror import MIRROR_LABEL, mirror_name


async def test_slots_are_mirrored_once_and_removed_with_their_voice(start_stack) -> None:
    stack = await start_stack(capacity=2, mirror_voice_slots=True)
    # A voice that has its own VoiceSlot before it takes a slot is never mirrored.
    own = await stack.allocator.register("own")
    await stack.cluster.create("own", own)
    await stack.observed("own", "Registered")
    await stack.allocator.ensure(own)
    await stack.observed("own", "Ready")

    voice = await stack.allocator.ready_voice("mirrored")
    name = mirror_name(voice.voice_id)
    assert name == voice.voice_id.replace("_", "-")
    status = await stack.observed(name, "Ready")
    assert status["remoteId"] == voice.provider_voice_id
    mirrored = stack.cluster.get(name)
    assert mirrored["metadata"]["labels"][MIRROR_LABEL] == "true"
    assert mirrored["spec"] == {"voiceId": voice.voice_id, "pinned": False, "provider": PROVIDER}

    rounds = stack.metrics.value("voiceslot_operator_slot_listings_total")
    await eventually(
        lambda: stack.metrics.value("voiceslot_operator_slot_listings_total") >= rounds + 2,
        what="two more mirror rounds",
    )
    assert sorted(o["metadata"]["name"] for o in stack.cluster.voiceslots(NAMESPACE)) == sorted(
        ["own", name]
    )
    assert stack.metrics.value("voiceslot_operator_mirrored_total", action="created") == 1

    # The voice is deleted in the allocator: its mirrored VoiceSlot follows.
    await stack.allocator.delete(voice.voice_id)
    await eventually(lambda: stack.cluster.get(name) is None, what="the mirrored VoiceSlot gone")
    assert stack.cluster.get("own") is not None


async def test_a_declared_voiceslot_replaces_the_mirrored_one(start_stack) -> None:
    stack = await start_stack(capacity=2, mirror_voice_slots=True)
    voice = await stack.allocator.ready_voice("declared-later")
    name = mirror_name(voice.voice_id)
    await stack.observed(name, "Ready")

    # Someone declares a VoiceSlot for the voice: it owns the voice (its pin applies) and
    # the mirrored stand-in goes, leaving the voice and its slot alone.
    await stack.cluster.create("declared", voice.voice_id, pinned=True)
    await eventually(lambda: stack.cluster.get(name) is None, what="the stand-in gone")

    async def pinned() -> bool:
        return (await stack.allocator.voice(voice.voice_id)).pinned

    await eventually(pinned, what="the declared VoiceSlot's pin applied")
    assert stack.cluster.condition("declared", "Conflict")["status"] == "False"
    assert await stack.allocator.state(voice.voice_id) == "READY"
    assert "RECLAIMED_BY_ADMIN" not in await stack.allocator.event_reasons(voice.voice_id)
    await stack.counted("slot_listings_total", more=2)
    assert stack.cluster.get(name) is None  # not mirrored again
    assert stack.counter("mirrored_total", action="created") == 1
    assert stack.counter("mirrored_total", action="deleted") == 1
