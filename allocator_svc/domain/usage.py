"""How a voice is used: the statistics the adaptive reclaim policy ranks voices by.

Every lease granted on a voice is one request for it. The allocator keeps, per voice, a
handful of counters in the voices table (so every replica sees the same history) and
updates them in the lease grant's own UPDATE, from the row's previous values alone: no
read first, no extra statement. ``observe`` is the rule; the SQL in
``repository.slots.usage_touch`` is the same rule written as column expressions (a test
replays leases through the database and compares both).

Per voice (``VoiceUsage``):

- ``freq``: a request count that halves every ``HALF_LIFE_S`` (as of ``last_used_at``):
  ``freq / tau`` estimates the voice's long-run request rate, ``tau = HALF_LIFE_S / ln 2``.
- ``requests``, ``continued``: how many requests, and how many of them were followed by
  another within ``SESSION_GAP_S`` (a session: a user speaking a run of sentences).
- ``burst``: requests in the current burst (1: the latest began one).
- ``sessions``: bursts that went on past their first request.
- ``expected``: at each burst start, the chance the voice's own rate gave of another
  request within the gap, summed: what independent traffic alone would have continued.
- ``gap_sum``: the gaps inside sessions, summed (their count is ``continued``).

Provider-wide (``SessionShape``): the sums of those counters over the provider's voices,
one aggregate query when a reclaim is decided; nothing is written per provider on the
hot path. Gaps between requests are counted from the previous request (``use_at``: a
clone completing moves ``last_used_at`` but is no request); how long a voice has sat idle
is counted from ``last_used_at``, which the lease's release sets: the time since the
user last finished.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HALF_LIFE_S = 4 * 3600.0
"""Decay of the request count: long enough to rank a voice asked for a few times a day,
and to keep a session's own 20 requests from looking like a high long-run rate; short
enough that the favourites of days ago fade (faster drift is caught by the policy's
staleness cap)."""
TAU_S = HALF_LIFE_S / math.log(2)
"""Seconds a decayed count spans in steady state: ``rate = freq / TAU_S``."""
SESSION_GAP_S = 60.0
"""A request within this long of the voice's last use continues a session."""


@dataclass(frozen=True, slots=True)
class VoiceUsage:
    """One voice's counters (columns ``use_*`` of the voices table)."""

    freq: float = 0.0
    """Decayed request count as of the voice's ``last_used_at``."""
    requests: int = 0
    """Requests (leases granted) ever."""
    continued: int = 0
    """Requests followed by another within the session gap."""
    burst: int = 0
    """Requests in the current burst."""
    sessions: int = 0
    """Bursts continued past their first request."""
    expected: float = 0.0
    """Sum, over burst starts, of the chance the voice's own rate continues them."""
    gap_sum: float = 0.0
    """Sum of gaps inside sessions, seconds."""


@dataclass(frozen=True, slots=True)
class SessionShape:
    """The provider's voices' counters summed: what sessions look like there."""

    starts: float = 0.0
    """Requests that began a burst: ``sum(requests - continued)``."""
    starts_continued: float = 0.0
    starts_expected: float = 0.0
    gap_sum: float = 0.0
    gap_n: float = 0.0
    since: float | None = None
    """Earliest history (seconds): before ``TAU_S`` has passed, decayed counts are still
    filling up and rates divide by the window actually observed."""

    def add(self, before: VoiceUsage, after: VoiceUsage) -> SessionShape:
        """The shape after one voice's counters moved from ``before`` to ``after`` (the
        running sums a simulator keeps instead of re-adding every voice)."""
        d_starts = (after.requests - after.continued) - (before.requests - before.continued)
        return SessionShape(
            self.starts + d_starts,
            self.starts_continued + after.sessions - before.sessions,
            self.starts_expected + after.expected - before.expected,
            self.gap_sum + after.gap_sum - before.gap_sum,
            self.gap_n + after.continued - before.continued,
            self.since,
        )


def decayed(freq: float, dt: float) -> float:
    return freq * 0.5 ** (max(dt, 0.0) / HALF_LIFE_S)


def window(age: float) -> float:
    """Seconds a decayed count spans after ``age`` seconds of history: ``TAU_S`` once
    the history is old, less before (a count still filling up is not a low rate)."""
    return max(TAU_S * -math.expm1(-max(age, 0.0) / TAU_S), 1.0)


def observe(
    u: VoiceUsage, last_request: float | None, now: float, *, created_at: float | None = None
) -> VoiceUsage:
    """The counters after a request at ``now`` (seconds) for a voice last requested at
    ``last_request`` (the voices table's ``use_at``), registered at ``created_at`` (its
    history cannot be older: the rate that says how many of its burst starts
    independent traffic explains is counted over that window; None: a settled window)."""
    if u.requests == 0 or last_request is None:
        return VoiceUsage(1.0, 1, 0, 1, u.sessions, u.expected, u.gap_sum)
    gap = max(now - last_request, 0.0)
    before = decayed(u.freq, gap)
    if gap < SESSION_GAP_S:
        return VoiceUsage(
            before + 1.0,
            u.requests + 1,
            u.continued + 1,
            u.burst + 1,
            u.sessions + (1 if u.burst == 1 else 0),
            u.expected,
            u.gap_sum + gap,
        )
    span = window(now - created_at) if created_at is not None else TAU_S
    expected = -math.expm1(-before / span * SESSION_GAP_S)
    return VoiceUsage(
        before + 1.0, u.requests + 1, u.continued, 1, u.sessions, u.expected + expected, u.gap_sum
    )


def rate_window(shape: SessionShape, now: float) -> float:
    """Seconds a decayed count spans: ``TAU_S`` once the provider has run for a while,
    less before (so early rates are not underestimated against the session terms)."""
    return window(now - shape.since if shape.since is not None else 0.0)


def session_prior(shape: SessionShape) -> tuple[float, float]:
    """(the share of burst starts continued beyond what their voices' rates explain — the
    prior of a voice with little history —, the mean gap inside sessions)."""
    q0 = (shape.starts_continued - shape.starts_expected + 0.5) / (shape.starts + 1.0)
    g = (shape.gap_sum + SESSION_GAP_S / 4) / (shape.gap_n + 1.0)
    return min(max(q0, 0.0), 1.0), max(g, 1e-3)
