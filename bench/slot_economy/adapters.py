"""Adapters that let the replay engine drive policies written for the allocator.

- ``ProductPolicy`` drives the allocator's own reclaim policy object, imported read-only
  from ``allocator_svc.domain.reclaim`` — today ``LeastRecentlyUsed()`` with its defaults
  (``min_residency`` 10 s), which is what ``allocator_svc.service.default_reclaim_policy``
  builds for the default configuration (``idle_reclaim_after_s`` 900 s > 10 s). Its
  ``choose(candidates, pressure, now=...)`` is called exactly as the dispatcher calls it:
  ``SlotCandidate`` rows for the resident voices, a ``ProviderPressure`` with the waiting
  requests, ``now`` as an aware datetime. No second copy of its logic lives here.
- ``CandidateDriver`` plays the database for ``candidate.py``: it keeps each voice's
  ``VoiceHistory`` and the provider's ``ProviderHistory``, updates them on every arrival
  with ``candidate.observe`` and asks ``candidate.decide`` on every miss.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from . import candidate as cand
from .policies import AdmitContext, Wait, _Base
from .traces import Request

ROOT = Path(__file__).resolve().parents[2]
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def _at(t: float) -> datetime:
    return EPOCH + timedelta(seconds=t)


class ProductPolicy(_Base):
    """``allocator_svc.domain.reclaim.LeastRecentlyUsed()``, the allocator's default."""

    name = "default"
    may_wait = True  # it returns no victim while every candidate is younger than min_residency

    def __init__(self, slots: int) -> None:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from allocator_svc.domain import reclaim

        self.reclaim = reclaim
        self.policy = reclaim.LeastRecentlyUsed()
        self.min_residency = self.policy.min_residency.total_seconds()
        self.last_used: dict[int, float] = {}
        self.ready_since: dict[int, float] = {}

    def hit(self, voice: int, now: float) -> None:
        self.last_used[voice] = now  # the lease touches last_used_at

    def admit(self, voice: int, ctx: AdmitContext) -> int | None | Wait:
        victim = None
        if ctx.free_slots == 0:
            r = self.reclaim
            cands = [
                r.SlotCandidate(
                    voice_id=str(v),
                    last_used_at=_at(self.last_used[v]),
                    ready_since=_at(self.ready_since[v]),
                    pinned=not ctx.evictable(v) and ctx.lease_until.get(v, -1.0) <= ctx.now,
                    active_leases=1 if ctx.lease_until.get(v, -1.0) > ctx.now else 0,
                )
                for v in ctx.residents
            ]
            pressure = r.ProviderPressure(backlog=1, free_slots=0, add_edit_remaining=None)
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


class CandidateDriver(_Base):
    """``candidate.decide`` over histories kept as the allocator's tables would keep them."""

    name = "candidate"
    may_wait = True

    def __init__(self, slots: int, config: cand.CandidateConfig | None = None) -> None:
        self.cfg = config or cand.CandidateConfig()
        self.voices: dict[int, cand.VoiceHistory] = {}
        self.provider = cand.ProviderHistory()
        self.ready_since: dict[int, float] = {}

    def observe(self, index: int, request: Request) -> None:
        h = self.voices.get(request.voice, cand.VoiceHistory())
        self.voices[request.voice], self.provider = cand.observe(
            h, self.provider, request.t, self.cfg, lease_s=request.lease
        )

    def hit(self, voice: int, now: float) -> None:
        pass  # every request was already observed on arrival

    def admit(self, voice: int, ctx: AdmitContext) -> int | None | Wait:
        victim = None
        if ctx.free_slots == 0:
            cands = [
                cand.Candidate(
                    voice_id=v,
                    history=self.voices[v],
                    ready_since=self.ready_since[v],
                    pinned=False,
                    active_leases=0 if ctx.evictable(v) else 1,
                )
                for v in ctx.residents
            ]
            pressure = cand.Pressure(
                backlog=1, free_slots=0, oldest_waiting_since=ctx.waiting_since
            )
            decision = cand.decide(cands, self.provider, pressure, ctx.now, self.cfg)
            if not decision.evict:
                return Wait(decision.retry_at)
            victim = int(decision.evict[0])  # type: ignore[call-overload]
            del self.ready_since[victim]
        self.ready_since[voice] = ctx.now
        return victim
