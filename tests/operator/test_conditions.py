"""The pure helpers behind a VoiceSlot's status: conditions set like Kubernetes sets them,
and allocator events folded into conditions and Kubernetes events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from voiceslot_operator.conditions import (
    AllocatorEvent,
    VoiceSnapshot,
    camel_case,
    fold_events,
    get_condition,
    is_deletion_ongoing,
    mark_overdue,
    observe_voice,
    overdue_s,
    phase_from_state,
    rfc3339,
    set_condition,
    status_fields,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def event(
    event_id: int, reason: str, from_phase: str | None, to_phase: str | None, *, t: float = 0
) -> AllocatorEvent:
    return AllocatorEvent(event_id, reason, from_phase, to_phase, "", at(t if t else event_id))


def voice(phase: str, **fields: object) -> VoiceSnapshot:
    values: dict[str, object] = {
        "voice_id": "v_1",
        "owner": "alice",
        "provider": "eleven",
        "phase": phase,
        "remote_id": "r1" if phase in ("Ready", "Reclaiming") else "",
        "pinned": False,
        "active_leases": 0,
        "generation": 1,
    }
    values.update(fields)
    return VoiceSnapshot(**values)  # type: ignore[arg-type]


def test_names() -> None:
    assert camel_case("EVENT_REASON_RECLAIMED_FOR_BACKLOG", prefix="EVENT_REASON_") == (
        "ReclaimedForBacklog"
    )
    assert phase_from_state("VOICE_STATE_READY") == "Ready"
    assert phase_from_state("idle") == "Idle"
    assert phase_from_state("VOICE_STATE_UNSPECIFIED") is None
    assert rfc3339(datetime(2026, 3, 1, 13, 0, 5, 123456, tzinfo=UTC)) == "2026-03-01T13:00:05Z"
    assert is_deletion_ongoing({"deletionTimestamp": "2026-03-01T13:00:05Z"})
    assert not is_deletion_ongoing({})


def test_transition_time_moves_only_when_the_status_flips() -> None:
    first = set_condition([], "Ready", "False", "Queued", "waiting", now=at(0), generation=1)
    same = set_condition(first, "Ready", "False", "Allocating", "cloning", now=at(5), generation=2)
    flipped = set_condition(same, "Ready", "True", "SlotHeld", "ready", now=at(9), generation=2)

    assert first[0]["lastTransitionTime"] == rfc3339(at(0))
    assert same[0] == {
        "type": "Ready",
        "status": "False",
        "reason": "Allocating",
        "message": "cloning",
        "observedGeneration": 2,
        "lastTransitionTime": rfc3339(at(0)),
    }
    assert flipped[0]["lastTransitionTime"] == rfc3339(at(9))
    assert first[0]["reason"] == "Queued", "the input list is not modified"


def test_conditions_keep_a_stable_order() -> None:
    conditions = set_condition([], "Reclaimed", "False", "NotReclaimed", now=at(0), generation=None)
    conditions = set_condition(conditions, "Ready", "True", "SlotHeld", now=at(0), generation=None)
    assert [c["type"] for c in conditions] == ["Ready", "Reclaimed"]
    assert "observedGeneration" not in conditions[0]


def test_a_reclaim_and_a_reallocation() -> None:
    conditions, notices = fold_events(
        [],
        [
            event(10, "ReclaimedIdle", "Ready", "Reclaiming"),
            event(11, "ReclaimedIdle", "Reclaiming", "Idle"),
        ],
        generation=1,
    )
    reclaimed = get_condition(conditions, "Reclaimed")
    assert reclaimed is not None
    assert (reclaimed["status"], reclaimed["reason"]) == ("True", "ReclaimedIdle")
    assert reclaimed["lastTransitionTime"] == rfc3339(at(11))
    assert [(n.type, n.reason) for n in notices] == [("Normal", "ReclaimedIdle")]

    conditions, notices = fold_events(
        conditions,
        [
            event(12, "Enqueued", "Idle", "Queued"),
            event(13, "AllocationStarted", "Queued", "Allocating"),
            event(14, "Cloned", "Allocating", "Ready"),
        ],
        generation=1,
    )
    reclaimed = get_condition(conditions, "Reclaimed")
    assert reclaimed is not None
    assert (reclaimed["status"], reclaimed["reason"]) == ("False", "Reallocated")
    assert [n.reason for n in notices] == ["Cloned"]


def test_a_failed_reclaim_is_a_warning_not_a_reclaim() -> None:
    conditions, notices = fold_events(
        [],
        [
            event(1, "ReclaimedByAdmin", "Ready", "Reclaiming"),
            event(2, "ReclaimedByAdmin", "Reclaiming", "Ready"),
        ],
        generation=None,
    )
    assert get_condition(conditions, "Reclaimed") is None
    assert [(n.type, n.reason) for n in notices] == [("Warning", "ReclaimFailed")]


def test_stuck_then_recovered_in_one_fold() -> None:
    conditions, notices = fold_events(
        [],
        [
            event(1, "StuckReset", "Allocating", None),
            event(2, "AllocationRetry", "Allocating", "Queued"),
            event(3, "AllocationStarted", "Queued", "Allocating"),
        ],
        generation=None,
    )
    stuck = get_condition(conditions, "Stuck")
    assert stuck is not None and (stuck["status"], stuck["reason"]) == ("True", "StuckReset")
    assert [n.reason for n in notices] == ["StuckReset", "AllocationRetry"]

    conditions, _ = fold_events(
        conditions, [event(4, "Cloned", "Allocating", "Ready")], generation=None
    )
    stuck = get_condition(conditions, "Stuck")
    assert stuck is not None and (stuck["status"], stuck["reason"]) == ("False", "Recovered")
    assert stuck["lastTransitionTime"] == rfc3339(at(4))


def test_drift_is_repaired_by_a_new_clone_but_not_a_provider_mismatch() -> None:
    conditions, _ = fold_events(
        [], [event(5, "DriftRemoteMissing", "Ready", "Idle")], generation=None
    )
    drifted = get_condition(conditions, "Drifted")
    assert drifted is not None and drifted["status"] == "True"

    conditions = observe_voice(
        conditions, voice("Queued"), voice_id="v_1", spec_provider=None, now=at(6), generation=None
    )
    assert get_condition(conditions, "Drifted")["status"] == "True"  # type: ignore[index]
    # Ready now (the state is read after the events): the drift is behind it.
    conditions = observe_voice(
        conditions, voice("Ready"), voice_id="v_1", spec_provider=None, now=at(9), generation=None
    )
    drifted = get_condition(conditions, "Drifted")
    assert drifted is not None and (drifted["status"], drifted["reason"]) == ("False", "Repaired")

    mismatch = observe_voice(
        conditions,
        voice("Ready"),
        voice_id="v_1",
        spec_provider="cartesia",
        now=at(10),
        generation=3,
    )
    drifted = get_condition(mismatch, "Drifted")
    assert drifted is not None and (drifted["status"], drifted["reason"]) == (
        "True",
        "ProviderMismatch",
    )
    again, _ = fold_events(mismatch, [event(11, "Cloned", "Allocating", "Ready")], generation=3)
    assert get_condition(again, "Drifted")["reason"] == "ProviderMismatch"  # type: ignore[index]


def test_every_condition_is_present_after_a_look() -> None:
    conditions = observe_voice(
        [], voice("Idle"), voice_id="v_1", spec_provider="eleven", now=at(0), generation=1
    )
    assert {c["type"]: (c["status"], c["reason"]) for c in conditions} == {
        "Ready": ("False", "Idle"),
        "Stuck": ("False", "NotStuck"),
        "Drifted": ("False", "InSync"),
        "Reclaimed": ("False", "NotReclaimed"),
        "Refused": ("False", "Permitted"),
        "Conflict": ("False", "NoConflict"),
        "DeletionBlocked": ("False", "NotBlocked"),
    }
    gone = observe_voice(
        conditions, None, voice_id="v_1", spec_provider=None, now=at(1), generation=1
    )
    ready = get_condition(gone, "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "VoiceNotFound")


def test_status_fields() -> None:
    ready = voice("Ready", active_leases=2, last_used_at=at(30))
    assert status_fields(ready, lease_holder="synth-1/job-2") == {
        "phase": "Ready",
        "provider": "eleven",
        "voiceId": "v_1",
        "owner": "alice",
        "remoteId": "r1",
        "lastUsedAt": rfc3339(at(30)),
        "activeLeases": 2,
        "leaseHolder": "synth-1/job-2",
    }
    idle = status_fields(voice("Idle"), lease_holder="synth-1/job-2")
    # None removes the field in a merge patch: no stale remote id or lease holder.
    assert idle["remoteId"] is None and idle["leaseHolder"] is None
    assert status_fields(None, lease_holder=None)["phase"] is None


def test_an_allocation_past_its_timeout_is_overdue() -> None:
    since = at(0)
    assert overdue_s(voice("Allocating"), state_since=since, now=at(301), after_s=300) == 301
    assert overdue_s(voice("Allocating"), state_since=since, now=at(299), after_s=300) is None
    assert overdue_s(voice("Queued"), state_since=since, now=at(999), after_s=300) is None
    assert overdue_s(voice("Allocating"), state_since=None, now=at(999), after_s=300) is None
    marked = mark_overdue([], 301.0, now=at(301), generation=1)
    stuck = get_condition(marked, "Stuck")
    assert stuck is not None and (stuck["status"], stuck["reason"]) == ("True", "AllocationOverdue")
    assert mark_overdue(marked, None, now=at(302), generation=1) == marked
    # Ready again: the condition settles as after a reset.
    ready = observe_voice(
        marked, voice("Ready"), voice_id="v_1", spec_provider=None, now=at(400), generation=1
    )
    recovered = get_condition(ready, "Stuck")
    assert recovered is not None and recovered["reason"] == "Recovered"
