"""The ``voiceslot.io/reclaim`` finalizer: deleting a VoiceSlot deletes the remote voice at
the provider first, and only then lets the VoiceSlot go."""

from __future__ import annotations

from typing import Any

from tests.operator.conftest import NAMESPACE, eventually
from voiceslot.providers.base import Provider
from voiceslot.testing.emulator import Fault, FaultKind, Op
from voiceslot_operator.finalizer import FINALIZER


class DeleteSpy:
    """A provider adapter that reports every remote delete before making it."""

    def __init__(self, inner: Provider, on_delete: Any) -> None:
        self._inner = inner
        self._on_delete = on_delete

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def delete(self, provider_voice_id: str) -> None:
        self._on_delete(provider_voice_id)
        await self._inner.delete(provider_voice_id)


async def test_deleting_a_voiceslot_deletes_the_remote_voice_before_the_finalizer(
    start_stack, k8s
) -> None:
    seen: list[dict[str, Any]] = []

    def snapshot(remote_id: str) -> None:
        # What Kubernetes holds at the moment the provider is asked to delete.
        obj = next(
            (
                o.raw
                for (res, ns, name), o in k8s.objects.items()
                if res.plural == "voiceslots"
                and ns == NAMESPACE
                and name == "doomed"
                and not o.deleted
            ),
            None,
        )
        seen.append({"remote": remote_id, "object": obj})

    stack = await start_stack(capacity=2, wrap=lambda p: DeleteSpy(p, snapshot))
    voice = await stack.allocator.ready_voice("doomed")
    await stack.cluster.create("doomed", voice.voice_id)
    await stack.observed("doomed", "Ready")
    assert FINALIZER in stack.cluster.get("doomed")["metadata"]["finalizers"]

    # The provider refuses the first delete: the VoiceSlot must wait, not vanish.
    stack.emulator.state.faults.inject(Fault(FaultKind.SERVER_ERROR, op=Op.DELETE, status=503))
    await stack.cluster.delete("doomed")
    await eventually(lambda: stack.cluster.get("doomed") is None, what="the VoiceSlot gone")

    assert [s["remote"] for s in seen] == [voice.provider_voice_id] * 2
    for s in seen:
        assert s["object"] is not None, "the VoiceSlot was gone before the remote delete"
        assert FINALIZER in s["object"]["metadata"]["finalizers"]
        assert s["object"]["metadata"]["deletionTimestamp"]
    live = {v.voice_id for v in stack.emulator.state.live_voices("elevenlabs")}
    assert voice.provider_voice_id not in live
    assert await stack.allocator.state(voice.voice_id) == "IDLE"
    reasons = await stack.allocator.event_reasons(voice.voice_id)
    # The refused delete left the voice READY without a trace; the second one recorded
    # ->Reclaiming and ->Idle.
    assert reasons.count("RECLAIMED_BY_ADMIN") == 2
    await stack.cluster.posted("doomed", "SlotReclaimed")
    assert stack.metrics.value("voiceslot_operator_finalizer_reclaims_total") == 1


async def test_voiceslot_of_an_unknown_voice_says_so_and_deletes_freely(start_stack) -> None:
    stack = await start_stack(capacity=1)
    await stack.cluster.create("ghost", "v_" + "0" * 32)
    ready = await eventually(
        lambda: (
            (c := stack.cluster.condition("ghost", "Ready")).get("reason") == "VoiceNotFound" and c
        ),
        what="Ready=False VoiceNotFound",
    )
    assert ready["status"] == "False"
    assert "phase" not in stack.cluster.status("ghost")
    await stack.cluster.delete("ghost")
    await eventually(lambda: stack.cluster.get("ghost") is None, what="the VoiceSlot gone")


async def test_without_the_allocator_the_finalizer_holds(start_stack) -> None:
    # The operator cannot reach its allocator (wrong address): nothing can be confirmed
    # deleted, so the VoiceSlot must stay until it can.
    stack = await start_stack(capacity=1, allocator_target="127.0.0.1:9")
    voice = await stack.allocator.ready_voice("unreachable")
    await stack.cluster.create("unreachable", voice.voice_id)
    await eventually(
        lambda: stack.metrics.value("voiceslot_operator_errors_total", where="reconcile") >= 2,
        what="failed refreshes",
    )
    # Nothing can be vouched for: Ready and the phase say "Unknown", not the last answer.
    assert stack.cluster.status("unreachable")["phase"] == "Unknown"
    ready = stack.cluster.condition("unreachable", "Ready")
    assert (ready["status"], ready["reason"]) == ("Unknown", "AllocatorUnreachable")

    await stack.cluster.delete("unreachable")
    await eventually(
        lambda: stack.metrics.value("voiceslot_operator_errors_total", where="finalizer") >= 3,
        what="failed reclaims, retried",
    )
    held = stack.cluster.get("unreachable")
    assert held is not None and FINALIZER in held["metadata"]["finalizers"]
    assert held["metadata"]["deletionTimestamp"]
    assert await stack.allocator.state(voice.voice_id) == "READY"
