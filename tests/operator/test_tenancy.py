"""Tenancy: a VoiceSlot acts only for the voice owners its namespace may act for. One
naming another owner's voice is refused (condition and event) and never touches it."""

from __future__ import annotations

from tests.operator.conftest import TENANT_NAMESPACE, eventually

TEAM = TENANT_NAMESPACE


async def test_voiceslot_outside_its_namespace_owners_does_nothing_and_says_why(
    start_stack,
) -> None:
    stack = await start_stack(capacity=2, namespace_owners={TEAM: ["alice"]})
    bobs = await stack.allocator.ready_voice("bobs", owner="bob")
    alices = await stack.allocator.ready_voice("alices", owner="alice")
    await stack.cluster.create("steal", bobs.voice_id, pinned=True, namespace=TEAM)
    await stack.cluster.create("mine", alices.voice_id, pinned=True, namespace=TEAM)

    # The namespace's own owner works as ever: the pin is applied, the status mirrored.
    await stack.observed("mine", "Ready", namespace=TEAM)
    assert (await stack.allocator.voice(alices.voice_id)).pinned
    assert stack.cluster.condition("mine", "Refused", TEAM)["status"] == "False"

    refused = await stack.condition("steal", "Refused", "True", namespace=TEAM)
    assert refused["reason"] == "OwnerNotPermitted"
    assert "'bob'" in refused["message"] and TEAM in refused["message"]
    ready = stack.cluster.condition("steal", "Ready", TEAM)
    assert (ready["status"], ready["reason"]) == ("False", "Refused")
    status = stack.cluster.status("steal", TEAM)
    # Nothing about bob's voice leaks into the namespace.
    assert not {"phase", "remoteId", "owner", "provider"} & set(status)
    await stack.cluster.posted("steal", "OwnerNotPermitted", TEAM)

    # Refresh after refresh, the voice is left alone, and the event is not repeated.
    await stack.counted("ignored_voiceslots_total", reason="refused")
    assert not (await stack.allocator.voice(bobs.voice_id)).pinned
    assert stack.cluster.event_reasons("steal", TEAM).count("OwnerNotPermitted") == 1

    # Deleting it does not reclaim bob's voice.
    await stack.cluster.delete("steal", TEAM)
    await eventually(lambda: stack.cluster.get("steal", TEAM) is None, what="steal gone")
    assert await stack.allocator.state(bobs.voice_id) == "READY"
    assert bobs.provider_voice_id in stack.live_remote_ids()
    reasons = await stack.allocator.event_reasons(bobs.voice_id)
    assert "PINNED" not in reasons and "RECLAIMED_BY_ADMIN" not in reasons


async def test_without_a_mapping_a_namespace_acts_only_for_its_namesake(start_stack) -> None:
    # No mapping: team-a may act for the owner "team-a" only; the home namespace (where
    # the tests' other VoiceSlots live) for everyone.
    stack = await start_stack(capacity=2)
    voice = await stack.allocator.ready_voice("someone", owner="alice")
    await stack.cluster.create("elsewhere", voice.voice_id, namespace=TEAM)
    refused = await stack.condition("elsewhere", "Refused", "True", namespace=TEAM)
    assert "own name" in refused["message"]
    await stack.cluster.create("home", voice.voice_id)
    await stack.observed("home", "Ready")
    assert stack.cluster.condition("home", "Refused")["status"] == "False"
