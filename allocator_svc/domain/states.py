"""The voice state machine, and the reasons things happen.

Every state change in the database is a transition listed here, applied by one fenced
UPDATE (``WHERE state = <expected>``): two replicas racing on one voice cannot both win,
and a transition not in ``TRANSITIONS`` cannot be written at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class VoiceState(StrEnum):
    REGISTERED = "registered"
    QUEUED = "queued"
    ALLOCATING = "allocating"
    READY = "ready"
    RECLAIMING = "reclaiming"
    IDLE = "idle"
    FAILED = "failed"
    DELETING = "deleting"
    """Deleted by its owner, but the remote copy may still exist: the row (and its slot)
    stays until the copy is confirmed gone, then the row is removed. Shown on the wire as
    RECLAIMING (the remote copy is being deleted)."""


class EventReason(StrEnum):
    REGISTERED = "registered"
    ENQUEUED = "enqueued"
    ALLOCATION_STARTED = "allocation_started"
    CLONED = "cloned"
    ADOPTED = "adopted"
    ALLOCATION_RETRY = "allocation_retry"
    DEAD_LETTERED = "dead_lettered"
    LEASED = "leased"
    LEASE_RELEASED = "lease_released"
    LEASE_EXPIRED = "lease_expired"
    RECLAIMED_IDLE = "reclaimed_idle"
    RECLAIMED_FOR_BACKLOG = "reclaimed_for_backlog"
    RECLAIMED_BY_ADMIN = "reclaimed_by_admin"
    STUCK_RESET = "stuck_reset"
    DRIFT_REMOTE_MISSING = "drift_remote_missing"
    DRIFT_ORPHAN_DELETED = "drift_orphan_deleted"
    PINNED = "pinned"
    UNPINNED = "unpinned"
    DELETED = "deleted"


S = VoiceState
TRANSITIONS: frozenset[tuple[VoiceState, VoiceState]] = frozenset(
    {
        (S.REGISTERED, S.QUEUED),
        (S.IDLE, S.QUEUED),
        (S.FAILED, S.QUEUED),
        (S.QUEUED, S.ALLOCATING),
        (S.ALLOCATING, S.READY),
        (S.ALLOCATING, S.QUEUED),  # retryable failure or stuck reset: back in line
        (S.ALLOCATING, S.FAILED),  # dead-lettered
        (S.READY, S.RECLAIMING),
        (S.READY, S.IDLE),  # the remote copy vanished behind our back
        (S.RECLAIMING, S.IDLE),
        (S.RECLAIMING, S.READY),  # the delete failed; the voice still holds its slot
        # Deletion: the row stays, holding its slot, until the remote copy is gone.
        (S.READY, S.DELETING),
        (S.RECLAIMING, S.DELETING),  # forced, while a reclaim deletes the copy
        (S.ALLOCATING, S.DELETING),  # forced, mid-clone: the copy is found by its label
    }
)

# States in which a voice occupies (or is about to occupy) a slot at its provider.
SLOT_HOLDING: frozenset[VoiceState] = frozenset({S.ALLOCATING, S.READY, S.RECLAIMING, S.DELETING})
# States from which EnsureActiveVoice enqueues an allocation.
NEEDS_ALLOCATION: frozenset[VoiceState] = frozenset({S.REGISTERED, S.IDLE, S.FAILED})


class InvalidTransition(Exception):
    pass


def check_transition(current: VoiceState, target: VoiceState) -> None:
    if (current, target) not in TRANSITIONS:
        raise InvalidTransition(f"{current} -> {target} is not a voice transition")


def holds_slot(state: VoiceState) -> bool:
    return state in SLOT_HOLDING


def needs_allocation(state: VoiceState) -> bool:
    return state in NEEDS_ALLOCATION


@dataclass(frozen=True)
class VoiceSeen:
    """What decides the fate of a late remote copy: the voice as it stands now."""

    state: VoiceState
    generation: int
    provider_voice_id: str | None


class LateCopy(StrEnum):
    KEEP = "keep"
    DELETE = "delete"


def late_copy_fate(voice: VoiceSeen | None, generation: int, provider_voice_id: str) -> LateCopy:
    """What to do with a remote voice cloned under a claim that was fenced off before it
    could complete (a reset or a delete got there first).

    Delete it only when nobody can own it: the voice is gone, its label has moved on (the
    generation changed, so no look-up will ever find this copy), it is being deleted, or
    it already holds another copy. Otherwise it is the voice's own copy under its current
    label: a reset adopted it (it is the voice's ``provider_voice_id``), or the voice's
    next allocation will find it by its label and adopt it. Deleting it then would leave a
    READY voice whose remote copy does not exist.
    """
    if voice is None or voice.generation != generation or voice.state == VoiceState.DELETING:
        return LateCopy.DELETE
    if voice.provider_voice_id == provider_voice_id:
        return LateCopy.KEEP
    if voice.provider_voice_id and voice.state in (VoiceState.READY, VoiceState.RECLAIMING):
        return LateCopy.DELETE  # a second copy under one label: the voice holds the other
    return LateCopy.KEEP
