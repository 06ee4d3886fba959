"""A candidate default reclaim policy: evict the voice least likely to be wanted soon, and
let a request wait rather than evict a voice in the middle of a session.

Pure logic: plain values in, plain values out, time as float seconds, no clock reads, no
imports beyond the standard library — so this module can move into
``allocator_svc/domain/`` unchanged. The bench drives it through an adapter that plays
the database's part (``adapters.CandidateDriver``).

The model. Two things bring a voice's next request:

1. its long-run rate ``lambda``: how often anyone starts using it. Estimated from a
   decayed request count ``freq`` (each request adds 1; the sum halves every
   ``half_life_s``): in steady state ``freq = lambda * tau`` with ``tau = half_life/ln 2``.
   This is what wins on independent (Zipf) traffic: keep the voices with the highest
   rates and let one-off voices rotate through the last slots — which needs the history
   of voices *not* in a slot too, as the voices table has it (a cache only sees its own).
   Two corrections: a rate that would have brought ``stale_factor`` requests in the time
   the voice has sat idle is out of date (the popular set drifted), so it is capped at
   ``stale_factor / idle``; and requests that came with a session do not count towards
   it (next point), so a user who speaks 20 sentences an hour is not ranked like a voice
   asked for 20 times an hour by 20 different people.
2. a live session. ``q``, the voice's share of requests followed by another within
   ``session_gap_s`` (its own history, shrunk towards the provider-wide share among
   requests that *begin* a burst: the best guess for a voice never seen before), minus
   what ``lambda`` alone explains, ``1 - exp(-lambda * gap)``, is the ``excess`` that
   sessions add. On independent traffic it is ~0 (a popular voice comes back quickly
   anyway; counting that twice would protect every cold voice just cloned); for users
   speaking a run of sentences it is ~0.95. With the gaps inside sessions roughly
   exponential with mean ``g`` (learned provider-wide), the chance a session is still
   going after ``t`` seconds idle is ``excess*S / (excess*S + 1 - excess)``,
   ``S = exp(-t/g)``; a live session asks again at rate ``1/g``. Idle time and gaps are
   counted from the end of the voice's latest lease: a synthesis in progress is not a
   user thinking.

The score is the expected request rate in the near future,
``rate = lambda * (1 - excess) + P(alive) / g``. Evict the lowest. If even the lowest is
in a session still going with probability ``>= session_threshold``, the request waits
instead — at most ``max_wait_s`` after the oldest waiting request arrived — and is
decided again when leases end, requests arrive, or that session would count as over.
After ``max_wait_s`` it evicts anyway: the wait is bounded. In overload this turns
thrashing (every pure cache evicts live sessions that come straight back) into a queue
for new sessions: one clone serves every request that gathered while it waited.

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
    half_life_s: float = 4 * 3600.0
    """Decay of the request count: long enough to rank a voice asked for a few times a
    day (and to keep a session's own 20 requests from looking like a high long-run rate),
    short enough that the favourites of days ago fade; faster drift is caught by
    ``stale_factor``. On the built-in traces 1 h cost sessions-normal 0.05x Belady, 4 h
    gained Zipf(1.0) nothing but lost it nothing either."""
    session_gap_s: float = 60.0
    """A request within this long of the previous one for the same voice continues a
    session; beyond it, a session is over."""
    session_threshold: float = 0.1
    """Evicting a voice whose session is still going with at least this probability is
    worse than a short wait. Lower: fewer clones in overload, longer waits (0.5 waits
    about 1 s at p95 and saves little; 0.1 about 14 s and halves the clones)."""
    max_wait_s: float = 30.0
    """Longest a request waits for a session to end before an eviction is forced."""
    prior_weight: float = 1.0
    """Pseudo-requests of the provider-wide prior in a voice's continuation share."""
    min_residency_s: float = 0.0
    """Protect a voice this long after it became ready. 0: the bench's replay leases the
    voice at once; the allocator needs it only while a requester may not yet hold its
    lease when the voice turns READY."""
    add_edit_reserve: int = 0
    """Evict nothing that would leave fewer add/edit operations than this."""
    stale_factor: float | None = 2.0
    """Cap a voice's rate at this many requests per idle time (None: no cap). Measured at
    full size: 1.0 beats ARC on the drifting diurnal trace (1.223x vs 1.230x Belady) but
    costs Zipf(1.0) 1.153x; 2.0 keeps Zipf(1.0) at 1.147x and leaves diurnal at 1.247x."""


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
    starts_expected: float = 0.0
    """At each burst start, the chance its voice's own rate gave of another request
    within the gap, summed (decayed): subtracted from ``starts_continued`` it leaves the
    continuations only sessions explain."""
    gap_sum: float = 0.0
    """Decayed sum and count of gaps inside sessions (shorter than the session gap)."""
    gap_n: float = 0.0
    at: float = 0.0
    since: float | None = None
    """First request seen: before a half-life has passed, decayed counts are still
    filling up, and rates divide by the window actually observed."""


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
        starts_expected=provider.starts_expected * p_decay,
        gap_sum=provider.gap_sum * p_decay,
        gap_n=provider.gap_n * p_decay,
        at=max(now, provider.at),
        since=now if provider.since is None else provider.since,
    )
    released = now + lease_s
    if voice.last_used_at is None:
        return VoiceHistory(now, 1.0, 1, 0, 1, released), replace(p, starts=p.starts + 1)
    before = _decay(voice.freq, now - voice.last_used_at, cfg)
    freq = before + 1.0
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
    lam = before / rate_window(p, now, cfg)
    expected = 1.0 - math.exp(-lam * cfg.session_gap_s)
    return VoiceHistory(now, freq, voice.requests + 1, voice.continued, 1, released), replace(
        p, starts=p.starts + 1, starts_expected=p.starts_expected + expected
    )


def rate_window(provider: ProviderHistory, now: float, cfg: CandidateConfig) -> float:
    """Seconds a decayed count spans: ``tau`` once the provider has run for a while,
    less before (so early rates are not underestimated against the session terms)."""
    tau = cfg.half_life_s / math.log(2)
    age = now - provider.since if provider.since is not None else 0.0
    return max(tau * -math.expm1(-max(age, 0.0) / tau), 1.0)


def session_shape(provider: ProviderHistory, cfg: CandidateConfig) -> tuple[float, float]:
    """(the share of burst starts continued beyond what their voices' rates explain — the
    prior excess of a voice with no history —, mean gap inside sessions)."""
    q0 = (provider.starts_continued - provider.starts_expected + 0.5) / (provider.starts + 1.0)
    g = (provider.gap_sum + cfg.session_gap_s / 4) / (provider.gap_n + 1.0)
    return min(max(q0, 0.0), 1.0), max(g, 1e-3)


def _continuation_share(
    h: VoiceHistory, q0: float, cfg: CandidateConfig, base: float = 0.0
) -> float:
    """The voice's share of requests followed within the gap, shrunk towards the prior:
    what its rate explains (``base``) plus the provider-wide excess ``q0``."""
    resolved = h.requests - 1  # the latest request's continuation is not known yet
    prior = min(q0 + base, 1.0)
    return min((h.continued + cfg.prior_weight * prior) / (resolved + cfg.prior_weight), 1.0)


def alive_probability(
    h: VoiceHistory,
    now: float,
    q0: float,
    g: float,
    cfg: CandidateConfig,
    window: float | None = None,
) -> tuple[float, float]:
    """(P(a session on this voice is still going), its long-run rate) at ``now``."""
    if h.last_used_at is None:
        return 0.0, 0.0
    tau = window if window is not None else cfg.half_life_s / math.log(2)
    lam = _decay(h.freq, now - h.last_used_at, cfg) / tau
    idle = max(now - (h.released_at if h.released_at is not None else h.last_used_at), 0.0)
    if cfg.stale_factor and idle > 0:
        # A rate that would have brought several requests in the time the voice sat idle
        # is out of date (the popular set moved on): cap it by what the silence allows.
        lam = min(lam, cfg.stale_factor / idle)
    base = 1.0 - math.exp(-lam * cfg.session_gap_s)
    excess = max(0.0, _continuation_share(h, q0, cfg, base) - base)
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


def reuse_rate(
    h: VoiceHistory,
    now: float,
    q0: float,
    g: float,
    cfg: CandidateConfig,
    window: float | None = None,
) -> float:
    """Expected requests per second for the voice in the near future."""
    alive, lam = alive_probability(h, now, q0, g, cfg, window)
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
