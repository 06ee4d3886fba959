"""Pure helpers that turn what the allocator says into a VoiceSlot's status.

Nothing here talks to Kubernetes or gRPC: the handlers fetch a :class:`VoiceSnapshot`
and the voice's new :class:`AllocatorEvent` s, and these functions compute the status
conditions and the Kubernetes events to post. Tests can drive them with plain values.

Conditions follow the Kubernetes convention (``metav1.Condition``): ``type``, ``status``
("True"/"False"/"Unknown"), a CamelCase ``reason``, a ``message``, ``observedGeneration``,
and ``lastTransitionTime``, which changes only when ``status`` flips.

- **Ready** — from the voice's current state: True while it holds a slot and can be used.
- **Stuck** — True once an allocation was reset for being stuck in Allocating (the
  allocator's ``STUCK_RESET`` event), or while the allocator reports the voice in
  Allocating for longer than the allocation timeout (``AllocationOverdue``), until the
  voice is ready again (then False, reason ``Recovered``). Both come from the allocator's
  records, so they survive an operator restart.
- **Drifted** — True when the provider lost the remote copy behind the allocator's back
  (``DriftRemoteMissing``) until the voice is ready again (``Repaired``), or while
  ``spec.provider`` names another provider than the allocator's (``ProviderMismatch``).
- **Reclaimed** — True once the slot was freed by a reclaim (idle, backlog, admin),
  until the voice holds a slot again (``Reallocated``).
- **Refused** — True while the VoiceSlot's namespace may not act for the voice's owner
  (see :mod:`.tenancy`); the operator then does nothing with the voice.
- **Conflict** — True while an older VoiceSlot stands for the same voice (see
  :mod:`.claims`); this one is then ignored.
- **DeletionBlocked** — True while a deletion waits for the voice's leases to end (see
  :mod:`.deletion`).

When the allocator cannot be asked, Ready is ``Unknown`` (reason ``AllocatorUnreachable``)
and the phase ``Unknown``: the last answer is no longer vouched for.

The event-driven conditions are *folded* from the allocator's voice events in order, so
the outcome does not depend on how often the operator looked: a reset that recovered
between two looks still shows as ``Stuck=False, reason=Recovered``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

ConditionStatus = Literal["True", "False", "Unknown"]
NoticeType = Literal["Normal", "Warning"]

READY, STUCK, DRIFTED, RECLAIMED = "Ready", "Stuck", "Drifted", "Reclaimed"
REFUSED, CONFLICT, DELETION_BLOCKED = "Refused", "Conflict", "DeletionBlocked"
CONDITION_TYPES: tuple[str, ...] = (
    READY,
    STUCK,
    DRIFTED,
    RECLAIMED,
    REFUSED,
    CONFLICT,
    DELETION_BLOCKED,
)
UNREACHABLE = "AllocatorUnreachable"
# status.phase while the allocator cannot be asked (not an allocator state).
UNKNOWN_PHASE = "Unknown"

PHASES: tuple[str, ...] = (
    "Registered",
    "Queued",
    "Allocating",
    "Ready",
    "Reclaiming",
    "Idle",
    "Failed",
    "Deleting",
)
# Phases in which the voice occupies (or is about to occupy) a provider slot.
HOLDING_PHASES = frozenset({"Allocating", "Ready", "Reclaiming", "Deleting"})
# Phases that come and go by themselves; a finalizer waits for them to settle.
TRANSIENT_PHASES = frozenset({"Allocating", "Reclaiming", "Deleting"})

RECLAIM_REASONS = frozenset({"ReclaimedIdle", "ReclaimedForBacklog", "ReclaimedByAdmin"})
# Allocator event reasons worth a Kubernetes event, and how loud. Leases come and go with
# every synthesis and would drown the rest, so they are left out.
_NOTICE_TYPES: Mapping[str, NoticeType] = {
    "Cloned": "Normal",
    "Adopted": "Normal",
    "Pinned": "Normal",
    "Unpinned": "Normal",
    "AllocationRetry": "Warning",
    "DeadLettered": "Warning",
    "StuckReset": "Warning",
    "DriftRemoteMissing": "Warning",
    "Deleted": "Warning",
}


@dataclass(frozen=True)
class VoiceSnapshot:
    """The allocator's view of one voice, as plain values."""

    voice_id: str
    owner: str
    provider: str
    phase: str | None
    """One of :data:`PHASES`; None for a state this operator does not know."""
    remote_id: str
    pinned: bool
    active_leases: int
    generation: int
    last_used_at: datetime | None = None
    last_error: str = ""
    updated_at: datetime | None = None
    """Two snapshots that compare equal mean nothing the status shows has changed."""


@dataclass(frozen=True)
class AllocatorEvent:
    """One event from the allocator's history of a voice."""

    event_id: int
    reason: str
    """CamelCase, e.g. ``ReclaimedIdle`` (``EVENT_REASON_RECLAIMED_IDLE`` on the wire)."""
    from_phase: str | None
    to_phase: str | None
    message: str
    occurred_at: datetime


@dataclass(frozen=True)
class Notice:
    """A Kubernetes event to post on the VoiceSlot."""

    type: NoticeType
    reason: str
    message: str


# -- small conversions -----------------------------------------------------------------------


def camel_case(enum_name: str, *, prefix: str = "") -> str:
    """``EVENT_REASON_RECLAIMED_IDLE`` (prefix ``EVENT_REASON_``) -> ``ReclaimedIdle``."""
    words = enum_name.removeprefix(prefix).lower().split("_")
    return "".join(word.capitalize() for word in words if word)


def phase_from_state(state: str) -> str | None:
    """The CRD phase for an allocator state name (``VOICE_STATE_READY`` or ``ready``)."""
    phase = camel_case(state, prefix="VOICE_STATE_")
    return phase if phase in PHASES else None


def rfc3339(moment: datetime) -> str:
    """UTC, second precision, ``Z`` suffix: what Kubernetes writes and kubectl reads."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_deletion_ongoing(meta: Mapping[str, Any]) -> bool:
    return bool(meta.get("deletionTimestamp"))


# -- conditions ------------------------------------------------------------------------------


def get_condition(conditions: Iterable[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def is_true(conditions: Iterable[Mapping[str, Any]], type_: str) -> bool:
    found = get_condition(conditions, type_)
    return found is not None and found.get("status") == "True"


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str = "",
    *,
    now: datetime,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """A new list with ``type_`` set. ``lastTransitionTime`` moves only when ``status``
    changes (or the condition is new); reason, message and generation always update.
    The input is not modified."""
    result = [dict(c) for c in conditions]
    existing = next((c for c in result if c.get("type") == type_), None)
    if existing is None:
        existing = {"type": type_}
        result.append(existing)
    if existing.get("status") != status or "lastTransitionTime" not in existing:
        existing["lastTransitionTime"] = rfc3339(now)
    existing["status"] = status
    existing["reason"] = reason
    existing["message"] = message
    if generation is not None:
        existing["observedGeneration"] = generation
    else:
        existing.pop("observedGeneration", None)
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    result.sort(key=lambda c: order.get(str(c.get("type")), len(order)))
    return result


def default_conditions(
    conditions: Sequence[Mapping[str, Any]], *, now: datetime, generation: int | None
) -> list[dict[str, Any]]:
    """Every condition type present, so ``kubectl wait --for=condition=...=false`` works
    from the start; existing ones are kept as they are."""
    defaults: Mapping[str, tuple[ConditionStatus, str]] = {
        READY: ("Unknown", "NotObserved"),
        STUCK: ("False", "NotStuck"),
        DRIFTED: ("False", "InSync"),
        RECLAIMED: ("False", "NotReclaimed"),
        REFUSED: ("False", "Permitted"),
        CONFLICT: ("False", "NoConflict"),
        DELETION_BLOCKED: ("False", "NotBlocked"),
    }
    result = [dict(c) for c in conditions]
    for type_, (status, reason) in defaults.items():
        if get_condition(result, type_) is None:
            result = set_condition(result, type_, status, reason, now=now, generation=generation)
    return result


def fold_events(
    conditions: Sequence[Mapping[str, Any]],
    events: Iterable[AllocatorEvent],
    *,
    generation: int | None,
) -> tuple[list[dict[str, Any]], list[Notice]]:
    """Apply the allocator's events (oldest first) to the event-driven conditions.

    Returns the new conditions and the Kubernetes events worth posting. Each condition's
    transition time is the allocator's time of the event that flipped it.
    """
    result = [dict(c) for c in conditions]
    notices: list[Notice] = []

    def put(type_: str, status: ConditionStatus, reason: str, message: str, at: datetime) -> None:
        nonlocal result
        result = set_condition(
            result, type_, status, reason, message, now=at, generation=generation
        )

    for e in events:
        at = e.occurred_at
        reclaim = e.reason in RECLAIM_REASONS or (
            # A reclaim left half done, finished by the stuck sweep.
            e.reason == "StuckReset" and e.from_phase == "Reclaiming"
        )
        if reclaim:
            # Two events per reclaim: Ready -> Reclaiming, then -> Idle (or back to Ready
            # when the provider refused the delete). Only the outcome matters.
            if e.to_phase == "Idle":
                put(RECLAIMED, "True", e.reason, e.message or "the slot was freed", at)
                notices.append(Notice("Normal", e.reason, e.message or "the slot was freed"))
            elif e.to_phase == "Ready":
                notices.append(Notice("Warning", "ReclaimFailed", e.message or e.reason))
            continue
        if e.reason == "StuckReset":
            put(STUCK, "True", "StuckReset", e.message or "allocation reset", at)
        elif e.reason == "DriftRemoteMissing":
            put(DRIFTED, "True", "DriftRemoteMissing", e.message or "remote voice missing", at)
        if e.to_phase == "Ready":
            result = _settle(result, holding=True, ready=True, now=at, generation=generation)
        if (kind := _NOTICE_TYPES.get(e.reason)) is not None:
            notices.append(Notice(kind, e.reason, e.message or _default_message(e)))
    return result, notices


def _settle(
    conditions: list[dict[str, Any]],
    *,
    holding: bool,
    ready: bool,
    now: datetime,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Close the event-driven conditions that the voice's state has put behind it: a voice
    that is ready again is no longer stuck or missing its remote copy, and one holding a
    slot is no longer reclaimed."""
    result = conditions
    if ready and is_true(result, STUCK):
        result = set_condition(
            result,
            STUCK,
            "False",
            "Recovered",
            "ready again after a stuck allocation",
            now=now,
            generation=generation,
        )
    drifted = get_condition(result, DRIFTED) or {}
    # A provider mismatch is not repaired by a clone; observe_voice owns it.
    if ready and drifted.get("status") == "True" and drifted.get("reason") == "DriftRemoteMissing":
        result = set_condition(
            result,
            DRIFTED,
            "False",
            "Repaired",
            "cloned again after the remote copy vanished",
            now=now,
            generation=generation,
        )
    if holding and is_true(result, RECLAIMED):
        result = set_condition(
            result,
            RECLAIMED,
            "False",
            "Reallocated",
            "the voice holds a slot again",
            now=now,
            generation=generation,
        )
    return result


def _default_message(e: AllocatorEvent) -> str:
    if e.from_phase and e.to_phase:
        return f"{e.from_phase} -> {e.to_phase}"
    return e.reason


def observe_voice(
    conditions: Sequence[Mapping[str, Any]],
    voice: VoiceSnapshot | None,
    *,
    voice_id: str,
    spec_provider: str | None,
    now: datetime,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Set the state-driven conditions (Ready, and Drifted for a provider mismatch)."""
    result = default_conditions(conditions, now=now, generation=generation)
    status, reason, message = ready_condition(voice, voice_id=voice_id)
    result = set_condition(result, READY, status, reason, message, now=now, generation=generation)
    if voice is None:
        return result
    # Events may have been missed (history paged away, a reset known only to this process):
    # the current state still says what is over.
    result = _settle(
        result,
        holding=voice.phase in HOLDING_PHASES,
        ready=voice.phase == "Ready",
        now=now,
        generation=generation,
    )
    drifted = get_condition(result, DRIFTED) or {}
    if spec_provider and spec_provider != voice.provider:
        result = set_condition(
            result,
            DRIFTED,
            "True",
            "ProviderMismatch",
            f"spec.provider is {spec_provider!r} but the allocator holds the voice at "
            f"{voice.provider!r}; voices are never moved",
            now=now,
            generation=generation,
        )
    elif drifted.get("reason") == "ProviderMismatch" and drifted.get("status") == "True":
        result = set_condition(
            result,
            DRIFTED,
            "False",
            "InSync",
            "spec.provider matches",
            now=now,
            generation=generation,
        )
    return result


def ready_condition(
    voice: VoiceSnapshot | None, *, voice_id: str
) -> tuple[ConditionStatus, str, str]:
    if voice is None:
        return "False", "VoiceNotFound", f"the allocator has no voice {voice_id}"
    where = voice.provider
    match voice.phase:
        case "Ready":
            return "True", "SlotHeld", f"ready at {where} as {voice.remote_id}"
        case "Allocating":
            return "False", "Allocating", f"clone in flight at {where}"
        case "Queued":
            return "False", "Queued", f"waiting for a free slot at {where}"
        case "Reclaiming":
            return "False", "Reclaiming", f"the remote copy at {where} is being deleted"
        case "Idle":
            return "False", "Idle", "no slot held; cloned again on the next use"
        case "Registered":
            return "False", "Registered", "sample stored; no slot wanted yet"
        case "Failed":
            return "False", "AllocationFailed", voice.last_error or "allocation dead-lettered"
        case _:
            return (
                "Unknown",
                "UnknownState",
                "the allocator reported a state this operator does not know",
            )


def overdue_s(
    voice: VoiceSnapshot | None, *, state_since: datetime | None, now: datetime, after_s: float
) -> float | None:
    """Seconds the voice has been Allocating (by the allocator's record of when it
    entered that state), when that is longer than ``after_s``; else None."""
    if voice is None or voice.phase != "Allocating" or state_since is None:
        return None
    age = (now - state_since).total_seconds()
    return age if age > after_s else None


def mark_overdue(
    conditions: Sequence[Mapping[str, Any]],
    age_s: float | None,
    *,
    now: datetime,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Stuck=True (``AllocationOverdue``) for an allocation past its timeout that the
    stuck sweep has not reset yet."""
    if age_s is None:
        return [dict(c) for c in conditions]
    return set_condition(
        conditions,
        STUCK,
        "True",
        "AllocationOverdue",
        f"allocating for {age_s:.0f}s, past the allocation timeout; the stuck sweep resets it",
        now=now,
        generation=generation,
    )


def mark_unreachable(
    conditions: Sequence[Mapping[str, Any]],
    message: str,
    *,
    now: datetime,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Ready=Unknown because the allocator could not be asked."""
    result = default_conditions(conditions, now=now, generation=generation)
    result = set_condition(
        result,
        READY,
        "Unknown",
        UNREACHABLE,
        f"the allocator cannot be asked: {message}"[:1024],
        now=now,
        generation=generation,
    )
    return result


def was_unreachable(conditions: Iterable[Mapping[str, Any]]) -> bool:
    current = get_condition(conditions, READY) or {}
    return current.get("status") == "Unknown" and current.get("reason") == UNREACHABLE


# -- status ----------------------------------------------------------------------------------


def status_fields(voice: VoiceSnapshot | None, *, lease_holder: str | None) -> dict[str, Any]:
    """The mirrored status fields (conditions aside). None values remove the field (JSON
    merge patch), so a field that stopped applying (remoteId after a reclaim) goes away."""
    if voice is None:
        return {
            "phase": None,
            "remoteId": None,
            "activeLeases": None,
            "leaseHolder": None,
        }
    return {
        "phase": voice.phase,
        "provider": voice.provider,
        "voiceId": voice.voice_id,
        "owner": voice.owner,
        "remoteId": voice.remote_id or None,
        "lastUsedAt": rfc3339(voice.last_used_at) if voice.last_used_at else None,
        "activeLeases": voice.active_leases,
        "leaseHolder": (lease_holder or None) if voice.active_leases else None,
    }
