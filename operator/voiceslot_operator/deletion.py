"""What deleting a VoiceSlot does to its voice: a pure decision, taken on every try.

The finalizer (``voiceslot.io/reclaim``) keeps the VoiceSlot until the decision lets it
go. In order:

1. The allocator has no such voice, or the namespace may not act for its owner: let
   go, the voice untouched (:attr:`Verdict.RELEASE`).
2. The VoiceSlot does not own the voice (a duplicate): let go, untouched.
3. Another VoiceSlot still stands for the voice: hand it over, untouched.
4. ``voiceslot.io/force-delete: "true"``: reclaim now, leases or not.
5. A clone or a delete is in flight: wait for it to settle.
6. Leases are live: wait (condition ``DeletionBlocked``) for them to end, counted from
   ``metadata.deletionTimestamp`` so a restart does not restart the clock; past
   ``delete_lease_wait_s``, give up: unpin and let go without reclaiming, so idle
   reclaim frees the slot once the synthesis is over.
7. The voice holds a slot: reclaim it. Otherwise there is nothing to free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

FORCE_DELETE_ANNOTATION = "voiceslot.io/force-delete"

# Phases that come and go by themselves; deletion waits for them to settle.
SETTLING_PHASES = frozenset({"Allocating", "Reclaiming", "Deleting"})


class Verdict(StrEnum):
    RELEASE = "release"
    """Let the VoiceSlot go; the voice is not touched."""
    HAND_OVER = "hand_over"
    """Let it go; another VoiceSlot owns the voice now."""
    RECLAIM = "reclaim"
    FORCE_RECLAIM = "force_reclaim"
    WAIT_SETTLE = "wait_settle"
    WAIT_LEASE = "wait_lease"
    GIVE_UP = "give_up"
    """Let it go without reclaiming; the lease outlived the wait."""


@dataclass(frozen=True)
class DeleteFacts:
    """Everything the decision depends on, as plain values."""

    voice_exists: bool
    permitted: bool
    owns_voice: bool
    successor: str | None
    """``namespace/name`` of another live VoiceSlot that stands for the voice."""
    forced: bool
    phase: str | None
    active_leases: int
    waited_s: float
    wait_bound_s: float


def decide_delete(facts: DeleteFacts) -> Verdict:
    if not facts.voice_exists or not facts.permitted or not facts.owns_voice:
        return Verdict.RELEASE
    if facts.successor:
        return Verdict.HAND_OVER
    if facts.forced:
        return Verdict.FORCE_RECLAIM
    if facts.phase in SETTLING_PHASES:
        return Verdict.WAIT_SETTLE
    if facts.active_leases > 0:
        return Verdict.WAIT_LEASE if facts.waited_s < facts.wait_bound_s else Verdict.GIVE_UP
    if facts.phase == "Ready":
        return Verdict.RECLAIM
    return Verdict.RELEASE


def is_forced(meta: Mapping[str, Any]) -> bool:
    value = (meta.get("annotations") or {}).get(FORCE_DELETE_ANNOTATION, "")
    return str(value).strip().lower() in ("true", "yes", "1")


def deletion_age_s(meta: Mapping[str, Any], *, now: datetime) -> float:
    """Seconds since the VoiceSlot was deleted (0 when not, or unreadable)."""
    raw = meta.get("deletionTimestamp")
    if not raw:
        return 0.0
    try:
        since = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return max(0.0, (now - since).total_seconds())
