"""A candidate default reclaim policy: evict the voice least likely to be wanted soon, and
let a request wait rather than evict a voice in the middle of a session.

Pure logic: plain values in, plain values out, time as float seconds, no clock reads, no
imports beyond the standard library — so this module can move into
``allocator_svc/domain/`` unchanged. The bench drives it through an adapter that plays
the database's part (``adapters.CandidateDriver``).

The model. A voice's requests come from two sources:

1. a long-run rate ``lambda`` — how often anyone starts using it. Estimated as a decayed
   request count ``freq`` (each request adds 1, the sum decays with ``half_life_s``):
   in steady state ``freq = lambda * tau`` with ``tau = half_life / ln 2``, so
   ``lambda ~ freq / tau``. This is what wins on independent (Zipf) traffic: keep the
   voices with the highest rates, let one-off voices rotate through the last slots.
2. a live session: after a request, another follows within ``session_gap_s`` with some
   probability. What matters is the *excess* over what ``lambda`` alone explains: on
   independent traffic a popular voice also comes back quickly, and counting that twice
   would protect every cold voice just cloned. So ``excess = q - (1 - exp(-lambda * gap))``
   where ``q`` is this voice's share of requests followed within the gap (its own
   history, shrunk towards the provider-wide share among requests that *start* a burst,
   the best guess for a voice never seen before). If the gaps inside sessions are roughly
   exponential with mean ``g`` (learned provider-wide), the chance the session is still
   alive after ``t`` idle seconds is ``excess*S / (excess*S + 1 - excess)`` with
   ``S = exp(-t/g)``; a live session asks again at rate ``1/g``.

The score is the expected request rate in the near future:
``rate = lambda + P(alive) / g``. Evict the lowest. If even the lowest is probably in a live
session (``P(alive) >= session_threshold``) the request waits — up to ``max_wait_s`` since
the oldest waiting request arrived — and is retried when leases end, requests arrive, or
the best candidate's session would be over. After ``max_wait_s`` it evicts anyway: the
wait is bounded.

Hard rules, before any score: never a pinned voice, one with an active lease, or one that
became ready less than ``min_residency_s`` ago; never more evictions than waiting requests
need; never an eviction that would leave fewer add/edit operations than the reserve.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class CandidateConfig:
    half_life_s: float = 3600.0
    """Decay of the request count: long enough to rank a voice asked for a few times an
    hour, short enough that yesterday's favourites fade within the day."""
    session_gap_s: float = 60.0
    """A request within this long of the previous one for the same voice continues a
    session; beyond it, a session is over."""
    session_threshold: float = 0.1
    """Evicting a voice whose session is alive with at least this probability is worse
    than a short wait."""
    max_wait_s: float = 30.0
    """Longest a request waits for a session to end before an eviction is forced."""
    prior_weight: float = 1.0
    """Pseudo-requests of the provider-wide prior in a voice's continuation share."""
    min_residency_s: float = 0.0
    """Protect a voice this long after it became ready. 0: the bench's replay leases the
    voice at once; the allocator needs it only while a requester may not yet hold its
    lease when the voice turns READY."""
    add_edit_reserve: int = 0
    between: str = "excess"
    stale_factor: float | None = 2.0


@dataclass(frozen=True)
class VoiceHistory:
    """What the allocator keeps per voice (columns of the voices table)."""

    last_used_at: float | None = None
    freq: float = 0.0
    """Decayed request count as of ``last_used_at``."""
    requests: int = 0
    continued: int = 0
    """Requests followed by another for this voice within the session gap."""
    burst: int = 0
    """Requests in the voice's current burst (1: the latest began one)."""
    released_at: float | None = None
    """When the voice's latest lease ends (or ended): idle time, and the gaps that say
    whether a session goes on, are counted from here — a synthesis in progress is not
    the user thinking."""


@dataclass(frozen=True)
class ProviderHistory:
    """What the allocator keeps per provider (one row): the shape of sessions there."""

    starts: float = 0.0
    """Decayed count of requests that began a burst (a voice's first, or after a gap)."""
    starts_continued: float = 0.0
    gap_sum: float = 0.0
    """Decayed sum and count of gaps inside sessions (shorter than the session gap)."""
    gap_n: float = 0.0
    at: float = 0.0


@dataclass(frozen=True)
class Candidate:
    voice_id: Hashable
    history: VoiceHistory
    ready_since: float
    pinned: bool = False
    active_leases: int = 0


@dataclass(frozen=True)
class Pressure:
    backlog: int
    """Requests waiting for a slot at this provider."""
    free_slots: int
    oldest_waiting_since: float | None
    add_edit_remaining: int | None = None
    reclaiming: int = 0


@dataclass(frozen=True)
class Decision:
    evict: tuple[Hashable, ...]
    """Voices to reclaim now, best first."""
    retry_at: float | None
    """When some request is left waiting: when to decide again at the latest."""


def _decay(value: float, dt: float, cfg: CandidateConfig) -> float:
    return value * 0.5 ** (max(dt, 0.0) / cfg.half_life_s)


def observe(
    voice: VoiceHistory,
    provider: ProviderHistory,
    now: float,
    cfg: CandidateConfig,
    *,
    lease_s: float = 0.0,
) -> tuple[VoiceHistory, ProviderHistory]:
    """Both histories after a request for the voice at ``now`` that holds it ``lease_s``
    (one UPDATE each; the allocator can equally move ``released_at`` when the lease ends)."""
    p_decay = 0.5 ** (max(now - provider.at, 0.0) / cfg.half_life_s)
    p = replace(
        provider,
        starts=provider.starts * p_decay,
        starts_continued=provider.starts_continued * p_decay,
        gap_sum=provider.gap_sum * p_decay,
        gap_n=provider.gap_n * p_decay,
        at=max(now, provider.at),
    )
    released = now + lease_s
    if voice.last_used_at is None:
        return VoiceHistory(now, 1.0, 1, 0, 1, released), replace(p, starts=p.starts + 1)
    freq = _decay(voice.freq, now - voice.last_used_at, cfg) + 1.0
    released = max(released, voice.released_at or now)
    gap = max(
        now - (voice.released_at if voice.released_at is not None else voice.last_used_at), 0.0
    )
    if gap < cfg.session_gap_s:
        # The previous request was continued; if it had begun a burst, that start counts.
        p = replace(
            p,
            gap_sum=p.gap_sum + gap,
            gap_n=p.gap_n + 1,
            starts_continued=p.starts_continued + (1 if voice.burst == 1 else 0),
        )
        return VoiceHistory(
            now, freq, voice.requests + 1, voice.continued + 1, voice.burst + 1, released
        ), p
    return VoiceHistory(now, freq, voice.requests + 1, voice.continued, 1, released), replace(
        p, starts=p.starts + 1
    )


def session_shape(provider: ProviderHistory, cfg: CandidateConfig) -> tuple[float, float]:
    """(prior continuation share of a burst start, mean gap inside sessions)."""
    q0 = (provider.starts_continued + 0.5) / (provider.starts + 1.0)
    g = (provider.gap_sum + cfg.session_gap_s / 4) / (provider.gap_n + 1.0)
    return min(q0, 1.0), max(g, 1e-3)


def _continuation_share(h: VoiceHistory, q0: float, cfg: CandidateConfig) -> float:
    resolved = h.requests - 1  # the latest request's continuation is not known yet
    return min((h.continued + cfg.prior_weight * q0) / (resolved + cfg.prior_weight), 1.0)


def alive_probability(
    h: VoiceHistory, now: float, q0: float, g: float, cfg: CandidateConfig
) -> tuple[float, float]:
    """(P(a session on this voice is still going), the rate it starts anew) at ``now``."""
    if h.last_used_at is None:
        return 0.0, 0.0
    idle = max(now - h.last_used_at, 0.0)
    tau = cfg.half_life_s / math.log(2)
    lam = _decay(h.freq, idle, cfg) / tau
    idle = max(now - (h.released_at if h.released_at is not None else h.last_used_at), 0.0)
    q = _continuation_share(h, q0, cfg)
    if cfg.stale_factor and idle > 0:
        # A rate that would have brought several requests in the time the voice sat idle
        # is out of date (the popular set moved on): cap it by what the silence allows.
        lam = min(lam, cfg.stale_factor / idle)
    excess = max(0.0, q - (1.0 - math.exp(-lam * cfg.session_gap_s)))
    if cfg.between == "bursts":
        # Requests that end a burst are the ones followed by a long gap: (1 - q) of them.
        lam *= 1.0 - q
    elif cfg.between == "excess":
        # Only the requests the long-run rate explains count towards it; the excess came
        # with sessions, and a session once over does not bring its requests back.
        lam *= 1.0 - excess
    if idle >= cfg.session_gap_s:
        return 0.0, lam
    if excess <= 0.0:
        return 0.0, lam
    if excess >= 1.0:
        return 1.0, lam
    s = excess * math.exp(-idle / g)
    return s / (s + 1.0 - excess), lam


def reuse_rate(h: VoiceHistory, now: float, q0: float, g: float, cfg: CandidateConfig) -> float:
    """Expected requests per second for the voice in the near future."""
    alive, lam = alive_probability(h, now, q0, g, cfg)
    return lam + alive / g


def _session_over_at(h: VoiceHistory, q0: float, g: float, cfg: CandidateConfig) -> float:
    """When P(alive) falls below the threshold (or the gap passes), idle time counted from
    the voice's last use."""
    assert h.last_used_at is not None
    q = _continuation_share(h, q0, cfg)
    theta = cfg.session_threshold
    e = min(max(q, 1e-9), 1.0 - 1e-9)
    idle = -g * math.log(theta * (1.0 - e) / (e * (1.0 - theta)))
    since = h.released_at if h.released_at is not None else h.last_used_at
    return since + min(max(idle, 0.0), cfg.session_gap_s)


def evictions_needed(p: Pressure, cfg: CandidateConfig) -> int:
    wanted = p.backlog - p.free_slots - p.reclaiming
    if p.add_edit_remaining is not None:
        wanted = min(wanted, p.add_edit_remaining - cfg.add_edit_reserve)
    return max(0, wanted)


def decide(
    candidates: Sequence[Candidate],
    provider: ProviderHistory,
    pressure: Pressure,
    now: float,
    cfg: CandidateConfig,
) -> Decision:
    """Which voices to reclaim for the waiting requests, and whether the rest wait."""
    wanted = evictions_needed(pressure, cfg)
    if wanted == 0:
        return Decision((), None)
    q0, g = session_shape(provider, cfg)
    pool = [
        c
        for c in candidates
        if not c.pinned and c.active_leases == 0 and now - c.ready_since >= cfg.min_residency_s
    ]
    scored = sorted(
        (
            (reuse_rate(c.history, now, q0, g, cfg), c.history.last_used_at or c.ready_since, c)
            for c in pool
        ),
        key=lambda x: (x[0], x[1]),
    )
    waited_out = (
        pressure.oldest_waiting_since is not None
        and now - pressure.oldest_waiting_since >= cfg.max_wait_s
    )
    evict: list[Hashable] = []
    retry_at: float | None = None
    for _rate, _last, c in scored[:wanted]:
        alive, _lam = alive_probability(c.history, now, q0, g, cfg)
        if alive >= cfg.session_threshold and not waited_out:
            # Mid-session: wait for it (or for the bound) instead of evicting.
            over = _session_over_at(c.history, q0, g, cfg)
            bound = (pressure.oldest_waiting_since or now) + cfg.max_wait_s
            retry_at = min(over, bound)
            break
        evict.append(c.voice_id)
    if len(evict) < wanted and retry_at is None:
        # Too few eligible voices: retry when the youngest protected one comes of age.
        young = [
            c.ready_since + cfg.min_residency_s
            for c in candidates
            if not c.pinned and c.active_leases == 0 and c.ready_since + cfg.min_residency_s > now
        ]
        retry_at = min(young, default=None)
    return Decision(tuple(evict), retry_at)
