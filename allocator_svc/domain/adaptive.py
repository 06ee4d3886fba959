"""The default reclaim policy: evict the voice least likely to be wanted soon, and let a
request wait rather than evict a voice in the middle of a session.

Two things bring a voice's next request (statistics: ``domain.usage``):

1. its long-run rate ``lambda``, from the decayed request count: ``freq / tau``. This is
   what wins on independent (Zipf) traffic: keep the voices with the highest rates and
   let one-off voices rotate through the last slots — which needs the history of voices
   *not* in a slot too, as the voices table has it (a cache only sees its own). Two
   corrections: a rate that would have brought ``stale_factor`` requests in the time the
   voice has sat idle is out of date (the popular set drifted) and is capped at
   ``stale_factor / idle``; and requests that came with a session do not count towards
   it, so a user who speaks 20 sentences an hour is not ranked like a voice asked for 20
   times an hour by 20 different people.
2. a live session. ``q``, the voice's share of requests followed by another within the
   session gap (its own history, shrunk towards the provider-wide share among burst
   starts: the best guess for a voice never seen before), minus what ``lambda`` alone
   explains, ``1 - exp(-lambda * gap)``, is the ``excess`` sessions add: ~0 on
   independent traffic, ~0.95 for users speaking a run of sentences. With gaps inside
   sessions roughly exponential with mean ``g`` (learned provider-wide), the chance a
   session still goes on after ``t`` seconds idle is ``excess*S / (excess*S + 1 -
   excess)``, ``S = exp(-t/g)``; a live session asks again at rate ``1/g``.

The score is the expected request rate in the near future, ``lambda * (1 - excess) +
P(alive) / g``; the lowest goes first. If even the lowest is in a session still going
with probability ``>= session_threshold``, the request waits instead — at most
``max_wait_s`` after the oldest waiting request came — and the dispatcher decides again
on its next round. In overload this turns thrashing (every pure cache evicts live
sessions that come straight back) into a queue for new sessions: one clone serves every
request that gathered while it waited.

Hard rules before any score (``reclaim``): never a pinned voice, one with an active lease,
or one ready for less than ``min_residency``; never more evictions than the waiting
requests need; never an eviction that would leave fewer add/edit operations than the
reserve.

Time is float seconds inside (``decide``, which the bench drives directly for speed);
``choose`` is the ``ReclaimPolicy`` face the allocator calls with datetimes.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from allocator_svc.domain.reclaim import (
    ProviderPressure,
    SlotCandidate,
    evictions_needed,
    may_evict,
)
from allocator_svc.domain.usage import (
    SESSION_GAP_S,
    TAU_S,
    SessionShape,
    VoiceUsage,
    decayed,
    rate_window,
    session_prior,
)


@dataclass(frozen=True, slots=True)
class Resident:
    """A voice holding a slot, in plain seconds."""

    voice_id: Hashable
    usage: VoiceUsage
    last_used_at: float | None
    """Last lease granted or released (idle time and session gaps count from here)."""
    ready_since: float
    pinned: bool = False
    active_leases: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    evict: tuple[Hashable, ...]
    """Voices to reclaim now, best first."""
    retry_at: float | None
    """When some request is left waiting: when to decide again at the latest."""


@dataclass(frozen=True)
class Adaptive:
    """Evict by expected near-future request rate; wait (bounded) for live sessions."""

    min_residency: timedelta = timedelta(seconds=10)
    """Protect a voice this long after it became ready: its requester may not hold its
    lease yet."""
    add_edit_reserve: int = 0
    """Evict nothing that would leave fewer add/edit operations than this."""
    max_wait_s: float = 30.0
    """Longest a request waits for a session to end before an eviction is forced."""
    session_threshold: float = 0.1
    """Evicting a voice whose session still goes on with at least this probability is
    worse than a short wait. Lower: fewer clones in overload, longer waits."""
    prior_weight: float = 1.0
    """Pseudo-requests of the provider-wide prior in a voice's continuation share."""
    stale_factor: float | None = 3.0
    """Cap a voice's rate at this many requests per idle second (None: no cap). On the
    bench's traces 2 to 3 keep the drifting diurnal trace below every reference policy;
    4 lets stale favourites linger (diurnal above ARC); 3 is best on Zipf."""

    # -- the ReclaimPolicy face ---------------------------------------------------------

    def choose(
        self, candidates: Sequence[SlotCandidate], pressure: ProviderPressure, *, now: datetime
    ) -> list[str]:
        wanted = evictions_needed(pressure, add_edit_reserve=self.add_edit_reserve)
        if wanted <= 0:
            return []
        residents = [
            Resident(
                c.voice_id,
                c.usage or VoiceUsage(),
                c.last_used_at.timestamp() if c.last_used_at else None,
                c.ready_since.timestamp(),
                c.pinned,
                c.active_leases,
            )
            for c in candidates
        ]
        oldest = pressure.oldest_waiting_since
        decision = self.decide(
            residents,
            pressure.shape or SessionShape(),
            wanted=wanted,
            oldest_waiting_since=oldest.timestamp() if oldest else None,
            now=now.timestamp(),
        )
        return [str(v) for v in decision.evict]

    # -- the decision, in seconds -------------------------------------------------------

    def decide(
        self,
        residents: Sequence[Resident],
        shape: SessionShape,
        *,
        wanted: int,
        oldest_waiting_since: float | None,
        now: float,
    ) -> Decision:
        """Up to ``wanted`` voices to reclaim, and whether the rest of the requests wait."""
        if wanted <= 0:
            return Decision((), None)
        q0, g = session_prior(shape)
        window = rate_window(shape, now)
        residency = self.min_residency.total_seconds()
        scored = sorted(
            (
                (self.reuse_rate(r, now, q0, g, window), r.last_used_at or r.ready_since, r)
                for r in residents
                if may_evict(
                    pinned=r.pinned,
                    active_leases=r.active_leases,
                    age_s=now - r.ready_since,
                    min_residency_s=residency,
                )
            ),
            key=lambda x: (x[0], x[1]),
        )
        waited_out = (
            oldest_waiting_since is not None and now - oldest_waiting_since >= self.max_wait_s
        )
        evict: list[Hashable] = []
        retry_at: float | None = None
        for _rate, _last, r in scored[:wanted]:
            alive, _lam = self.alive_probability(r, now, q0, g, window)
            if alive >= self.session_threshold and not waited_out:
                # Mid-session: wait for it (or for the bound) instead of evicting.
                bound = (oldest_waiting_since or now) + self.max_wait_s
                retry_at = min(self._session_over_at(r, q0, g), bound)
                break
            evict.append(r.voice_id)
        if len(evict) < wanted and retry_at is None:
            # Too few eligible voices: decide again when the youngest comes of age.
            young = [
                r.ready_since + residency
                for r in residents
                if not r.pinned and r.active_leases == 0 and r.ready_since + residency > now
            ]
            retry_at = min(young, default=None)
        return Decision(tuple(evict), retry_at)

    # -- the model ----------------------------------------------------------------------

    def _continuation_share(self, u: VoiceUsage, q0: float, base: float = 0.0) -> float:
        """The voice's share of requests followed within the gap, shrunk towards the
        prior: what its rate explains (``base``) plus the provider-wide excess ``q0``."""
        resolved = u.requests - 1  # the latest request's continuation is not known yet
        prior = min(q0 + base, 1.0)
        return min((u.continued + self.prior_weight * prior) / (resolved + self.prior_weight), 1.0)

    def alive_probability(
        self, r: Resident, now: float, q0: float, g: float, window: float
    ) -> tuple[float, float]:
        """(P(a session on this voice still goes on), its long-run rate) at ``now``."""
        if r.last_used_at is None or r.usage.requests == 0:
            return 0.0, 0.0
        idle = max(now - r.last_used_at, 0.0)
        count = decayed(r.usage.freq, idle)
        lam, settled = count / window, count / TAU_S
        if self.stale_factor and idle > 0:
            # A rate that would have brought several requests in the time the voice sat
            # idle is out of date (the popular set moved on): cap it by what the silence
            # allows.
            lam = min(lam, self.stale_factor / idle)
            settled = min(settled, self.stale_factor / idle)
        # What the voice's rate alone explains of its continuations is judged on the
        # settled rate (count / tau): while the history is younger than tau the windowed
        # rate of a voice in a session is mostly that session's own requests, and would
        # explain the session away.
        base = -math.expm1(-settled * SESSION_GAP_S)
        excess = max(0.0, self._continuation_share(r.usage, q0, base) - base)
        # Only the requests the long-run rate explains count towards it; the excess came
        # with sessions, and a session once over does not bring its requests back.
        lam *= 1.0 - excess
        if idle >= SESSION_GAP_S or excess <= 0.0:
            return 0.0, lam
        if excess >= 1.0:
            return 1.0, lam
        s = excess * math.exp(-idle / g)
        return s / (s + 1.0 - excess), lam

    def reuse_rate(self, r: Resident, now: float, q0: float, g: float, window: float) -> float:
        """Expected requests per second for the voice in the near future."""
        alive, lam = self.alive_probability(r, now, q0, g, window)
        return lam + alive / g

    def _session_over_at(self, r: Resident, q0: float, g: float) -> float:
        """When P(alive) falls below the threshold (or the gap passes)."""
        q = self._continuation_share(r.usage, q0)
        theta = self.session_threshold
        e = min(max(q, 1e-9), 1.0 - 1e-9)
        idle = -g * math.log(theta * (1.0 - e) / (e * (1.0 - theta)))
        since = r.last_used_at if r.last_used_at is not None else r.ready_since
        return since + min(max(idle, 0.0), SESSION_GAP_S)
