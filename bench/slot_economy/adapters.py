"""Adapters that let the replay engine drive the allocator's own reclaim policies.

No policy logic lives here: each adapter builds its policy object exactly as the
allocator does (``allocator_svc.service.default_reclaim_policy`` over an
``AllocatorConfig`` that names it) and plays the database's part around it.

Both run with no residency (see ``ProductDefault.__init__``); everything else is the
allocator's default configuration.

- ``ProductDefault`` drives the default policy (``allocator_svc.domain.adaptive.Adaptive``)
  through ``Adaptive.decide``, the seconds-valued core its ``choose`` calls (datetimes
  for a few hundred thousand decisions would only slow the replay). As the voices table
  would, it keeps each voice's ``VoiceUsage`` (moved by ``domain.usage.observe`` on every
  request, as the lease grant's UPDATE moves it), its ``use_at`` (the latest request)
  and ``last_used_at`` (set at the grant and again at the lease's end), and the
  provider's ``SessionShape`` (the sums the reclaim decision reads).
- ``ProductLRU`` drives ``allocator_svc.domain.reclaim.LeastRecentlyUsed`` (the ``lru``
  setting) through ``choose``, exactly as the dispatcher calls it: ``SlotCandidate``
  rows, a ``ProviderPressure``, ``now`` as an aware datetime.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .policies import AdmitContext, Wait, _Base
from .traces import Request

ROOT = Path(__file__).resolve().parents[2]
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from allocator_svc.domain import reclaim, usage  # noqa: E402
from allocator_svc.domain.adaptive import Adaptive, Resident  # noqa: E402
from allocator_svc.service import default_reclaim_policy  # noqa: E402
from voiceslot.config import AllocatorConfig  # noqa: E402


def product_policy(name: str, **settings: Any) -> reclaim.ReclaimPolicy:
    """The policy the allocator runs with ``allocator.reclaim_policy = name``."""
    return default_reclaim_policy(AllocatorConfig(reclaim_policy=name, **settings))


def _at(t: float) -> datetime:
    return EPOCH + timedelta(seconds=t)


class ProductLRU(_Base):
    """``reclaim_policy = "lru"``."""

    name = "product-lru"
    may_wait = True  # it returns no victim while every candidate is younger than min_residency

    def __init__(self, slots: int) -> None:
        policy = product_policy("lru")
        assert isinstance(policy, reclaim.LeastRecentlyUsed)
        self.policy = replace(policy, min_residency=timedelta(0))  # as ProductDefault's
        self.min_residency = self.policy.min_residency.total_seconds()
        self.last_used: dict[int, float] = {}
        self.ready_since: dict[int, float] = {}

    def hit(self, voice: int, now: float) -> None:
        self.last_used[voice] = now  # the lease touches last_used_at

    def admit(self, voice: int, ctx: AdmitContext) -> int | None | Wait:
        victim = None
        if ctx.free_slots == 0:
            cands = [
                reclaim.SlotCandidate(
                    voice_id=str(v),
                    last_used_at=_at(self.last_used[v]),
                    ready_since=_at(self.ready_since[v]),
                    pinned=not ctx.evictable(v) and ctx.lease_until.get(v, -1.0) <= ctx.now,
                    active_leases=1 if ctx.lease_until.get(v, -1.0) > ctx.now else 0,
                )
                for v in ctx.residents
            ]
            pressure = reclaim.ProviderPressure(backlog=1, free_slots=0, add_edit_remaining=None)
            chosen = self.policy.choose(cands, pressure, now=_at(ctx.now))
            if not chosen:
                young = [
                    self.ready_since[v] + self.min_residency
                    for v in ctx.residents
                    if ctx.evictable(v) and self.ready_since[v] + self.min_residency > ctx.now
                ]
                return Wait(min(young, default=None))
            victim = int(chosen[0])
            del self.last_used[victim], self.ready_since[victim]
        self.last_used[voice] = ctx.now
        self.ready_since[voice] = ctx.now
        return victim


class ProductDefault(_Base):
    """The default policy (``reclaim_policy = "adaptive"``) over the voices table's columns."""

    name = "default"
    may_wait = True

    def __init__(
        self, slots: int, *, policy: Adaptive | None = None, since: float | None = None
    ) -> None:
        """``policy``: the one an allocator runs (default: the default configuration's,
        without the residency — it protects a voice between READY and its requester's
        lease, and the replay leases it the instant it is cloned). ``since``: when the
        provider's voices were first registered (the allocator's history starts there);
        default: the first request."""
        if policy is None:
            default = product_policy("adaptive")
            assert isinstance(default, Adaptive)
            policy = replace(default, min_residency=timedelta(0))
        self.policy = policy
        self.usage: dict[int, usage.VoiceUsage] = {}
        self.granted_at: dict[int, float] = {}
        self.released_at: dict[int, float] = {}
        self.shape = usage.SessionShape(since=since)
        self.ready_since: dict[int, float] = {}
        self._residents: dict[int, Resident] = {}

    def _last_used_at(self, voice: int, now: float) -> float | None:
        """The ``last_used_at`` column: the latest grant, or the lease's end once past."""
        granted = self.granted_at.get(voice)
        released = self.released_at.get(voice)
        if released is not None and released <= now:
            return max(released, granted or released)
        return granted

    def observe(self, index: int, request: Request) -> None:
        v, now = request.voice, request.t
        if self.shape.since is None:
            self.shape = usage.SessionShape(
                self.shape.starts,
                self.shape.starts_continued,
                self.shape.starts_expected,
                self.shape.gap_sum,
                self.shape.gap_n,
                now,
            )
        before = self.usage.get(v, usage.VoiceUsage())
        # Every voice was registered when the provider's history began (``since``).
        after = usage.observe(before, self.granted_at.get(v), now, created_at=self.shape.since)
        self.usage[v] = after
        self.shape = self.shape.add(before, after)
        self.granted_at[v] = now
        self.released_at[v] = max(self.released_at.get(v, now), now + request.lease)
        self._residents.pop(v, None)

    def hit(self, voice: int, now: float) -> None:
        pass  # every request was already observed on arrival

    def _resident(self, v: int, now: float, leased: bool) -> Resident:
        last = self._last_used_at(v, now)
        r = self._residents.get(v)
        if r is None or r.last_used_at != last or (r.active_leases > 0) != leased:
            r = Resident(v, self.usage[v], last, self.ready_since[v], False, int(leased))
            self._residents[v] = r
        return r

    def admit(self, voice: int, ctx: AdmitContext) -> int | None | Wait:
        victim = None
        if ctx.free_slots == 0:
            residents = [self._resident(v, ctx.now, not ctx.evictable(v)) for v in ctx.residents]
            decision = self.policy.decide(
                residents,
                self.shape,
                wanted=1,
                oldest_waiting_since=ctx.waiting_since,
                now=ctx.now,
            )
            if not decision.evict:
                return Wait(decision.retry_at)
            victim = int(decision.evict[0])  # type: ignore[call-overload]
            del self.ready_since[victim]
            self._residents.pop(victim, None)
        self.ready_since[voice] = ctx.now
        self._residents.pop(voice, None)
        return victim
