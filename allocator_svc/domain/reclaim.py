"""Which ready voices to evict when a provider is full and requests are waiting.

A policy sees plain values (no rows, no clock calls) so a simulator can replay recorded
traces against alternatives. The rules every policy keeps are applied first by
``eligible``: never a leased or pinned voice, never one that only just became ready
(evicting it would thrash), and never anything when nobody is waiting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol


@dataclass(frozen=True)
class SlotCandidate:
    voice_id: str
    last_used_at: datetime | None
    ready_since: datetime
    pinned: bool
    active_leases: int


@dataclass(frozen=True)
class ProviderPressure:
    backlog: int
    """Allocation requests due and waiting at this provider."""
    free_slots: int
    add_edit_remaining: int | None
    """Clone operations left this period (ElevenLabs caps them monthly); None: no cap."""


def eligible(c: SlotCandidate, *, now: datetime, min_residency: timedelta) -> bool:
    return not c.pinned and c.active_leases == 0 and now - c.ready_since >= min_residency


class ReclaimPolicy(Protocol):
    def choose(
        self, candidates: Sequence[SlotCandidate], pressure: ProviderPressure, *, now: datetime
    ) -> list[str]:
        """Voice ids to reclaim now, best first."""
        ...


@dataclass(frozen=True)
class LeastRecentlyUsed:
    """Evict the least recently used eligible voices, one per waiting request beyond the
    free slots.

    Every eviction of a voice that will be wanted again costs a re-clone; where the
    provider caps clone operations, keep ``add_edit_reserve`` of them for voices nobody
    holds yet instead of churning through the month's budget.
    """

    min_residency: timedelta = timedelta(seconds=10)
    add_edit_reserve: int = 0

    def choose(
        self, candidates: Sequence[SlotCandidate], pressure: ProviderPressure, *, now: datetime
    ) -> list[str]:
        wanted = pressure.backlog - pressure.free_slots
        if pressure.add_edit_remaining is not None:
            wanted = min(wanted, pressure.add_edit_remaining - self.add_edit_reserve)
        if wanted <= 0:
            return []
        pool = [c for c in candidates if eligible(c, now=now, min_residency=self.min_residency)]
        pool.sort(key=lambda c: (c.last_used_at or c.ready_since, c.voice_id))
        return [c.voice_id for c in pool[:wanted]]
