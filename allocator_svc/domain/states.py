"""The voice state machine, and the reasons things happen.

Every state change in the database is a transition listed here, applied by one fenced
UPDATE (``WHERE state = <expected>``): two replicas racing on one voice cannot both win,
and a transition not in ``TRANSITIONS`` cannot be written at all.
"""

from __future__ import annotations

from enum import StrEnum


class VoiceState(StrEnum):
    REGISTERED = "registered"
    QUEUED = "queued"
    ALLOCATING = "allocating"
    READY = "ready"
    RECLAIMING = "reclaiming"
    IDLE = "idle"
    FAILED = "failed"


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
    }
)

# States in which a voice occupies (or is about to occupy) a slot at its provider.
SLOT_HOLDING: frozenset[VoiceState] = frozenset({S.ALLOCATING, S.READY, S.RECLAIMING})
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
