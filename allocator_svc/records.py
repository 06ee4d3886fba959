"""What the allocator's use cases hand around: plain frozen values, no ORM rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from allocator_svc.domain.states import EventReason, VoiceState


@dataclass(frozen=True)
class Voice:
    id: str
    owner: str
    display_name: str
    provider: str
    language: str
    state: VoiceState
    generation: int
    provider_voice_id: str | None
    pinned: bool
    sample_key: str
    sample_sha256: str
    sample_bytes: int
    last_error: str
    created_at: datetime
    updated_at: datetime
    state_changed_at: datetime
    last_used_at: datetime | None
    active_leases: int = 0


@dataclass(frozen=True)
class Lease:
    id: str
    voice_id: str
    holder: str
    expires_at: datetime


@dataclass(frozen=True)
class ReadyOutcome:
    voice: Voice
    lease: Lease


@dataclass(frozen=True)
class Queued:
    voice: Voice
    position: int
    estimated_wait_s: float


@dataclass(frozen=True)
class Allocating:
    voice: Voice
    estimated_wait_s: float


EnsureOutcome = ReadyOutcome | Queued | Allocating


@dataclass(frozen=True)
class Claim:
    """An allocation the dispatcher has taken on: clone or adopt, then complete."""

    request_id: int
    voice_id: str
    provider: str
    generation: int
    token: str
    attempts: int
    sample_key: str
    language: str


@dataclass(frozen=True)
class ReclaimTarget:
    voice_id: str
    provider: str
    provider_voice_id: str
    reason: EventReason


@dataclass(frozen=True)
class Event:
    id: int
    voice_id: str
    reason: EventReason
    from_state: VoiceState | None
    to_state: VoiceState | None
    message: str
    occurred_at: datetime


@dataclass(frozen=True)
class Slot:
    voice: Voice
    lease_holder: str


@dataclass(frozen=True)
class ProviderStats:
    name: str
    kind: str
    capacity: int
    used: int
    queued: int
    oldest_queued_at: datetime | None
    breaker_state: str
    add_edit_remaining: int | None


@dataclass(frozen=True)
class Deletion:
    """A deleted voice whose row stays (DELETING) until its remote copy is gone."""

    voice_id: str
    provider: str
    provider_voice_id: str | None
    """None when it was deleted mid-allocation: the copy, if any, is found by its label."""
    generation: int
    dispatch_lease_live: bool = False
    """An allocation of it may still be cloning: wait, its late copy is deleted by the
    dispatcher itself (see ``domain.states.late_copy_fate``)."""
