"""Which ready voices to evict when a provider is full and requests are waiting.

There is one decision, whoever asks: the dispatcher when a claim round finds no free slot,
and maintenance when it reclaims voices idle past a threshold (it only narrows the
candidates to those idle voices). Both call the same policy with the same pressure, so
both honour the same limits: how many evictions the waiting requests need *after* the
free slots and the reclaims already in flight, and the provider's add/edit budget.

A policy sees plain values (no rows, no clock calls) so a simulator can replay recorded
traces against alternatives (``bench/slot_economy.py`` drives these very objects). The
rules every policy keeps are applied first by ``eligible``: never a leased or pinned
voice, never one that only just became ready (evicting it would thrash), and never
anything when nobody is waiting. A policy may return fewer voices than the waiting
requests need: the rest stay queued and the dispatcher asks again on its next round —
that is how a policy lets a request wait rather than evict (see ``adaptive``).

Policies: ``LeastRecentlyUsed`` here, ``adaptive.Adaptive`` (the default); a deployment
picks one by name (``policies.reclaim_policy``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from allocator_svc.domain.usage import SessionShape, VoiceUsage


@dataclass(frozen=True)
class SlotCandidate:
    voice_id: str
    last_used_at: datetime | None
    ready_since: datetime
    pinned: bool
    active_leases: int
    usage: VoiceUsage | None = None
    """The voice's use statistics (``domain.usage``); None: the policy does not need them."""


@dataclass(frozen=True)
class ProviderPressure:
    backlog: int
    """Allocation requests due and waiting at this provider."""
    free_slots: int
    add_edit_remaining: int | None
    """Clone operations left this period (ElevenLabs caps them monthly); None: no cap."""
    reclaiming: int = 0
    """Slots already being freed (reclaims in flight): each serves one waiting request,
    so evicting another voice for that request would evict one too many."""
    oldest_waiting_since: datetime | None = None
    """When the longest-waiting request came: a policy that lets requests wait bounds
    the wait from here."""
    shape: SessionShape | None = None
    """The provider's voices' use statistics summed (``domain.usage``)."""


def evictions_needed(pressure: ProviderPressure, *, add_edit_reserve: int = 0) -> int:
    """How many more voices to evict: one per waiting request that neither a free slot
    nor a reclaim in flight will serve, and no more than the add/edit budget (beyond a
    reserve) can re-clone."""
    wanted = pressure.backlog - pressure.free_slots - pressure.reclaiming
    if pressure.add_edit_remaining is not None:
        wanted = min(wanted, pressure.add_edit_remaining - add_edit_reserve)
    return max(0, wanted)


def may_evict(*, pinned: bool, active_leases: int, age_s: float, min_residency_s: float) -> bool:
    """The rule every policy keeps: not pinned, not leased, ready long enough."""
    return not pinned and active_leases == 0 and age_s >= min_residency_s


def eligible(c: SlotCandidate, *, now: datetime, min_residency: timedelta) -> bool:
    return may_evict(
        pinned=c.pinned,
        active_leases=c.active_leases,
        age_s=(now - c.ready_since).total_seconds(),
        min_residency_s=min_residency.total_seconds(),
    )


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
        wanted = evictions_needed(pressure, add_edit_reserve=self.add_edit_reserve)
        if wanted <= 0:
            return []
        pool = [c for c in candidates if eligible(c, now=now, min_residency=self.min_residency)]
        pool.sort(key=lambda c: (c.last_used_at or c.ready_since, c.voice_id))
        return [c.voice_id for c in pool[:wanted]]
