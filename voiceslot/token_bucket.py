"""A token bucket as pure values: the level is derived from (tokens, at) and the clock,
so the state can live anywhere — a provider's database row shared by every replica (the
allocator's clone budget), or a dict in one process (per-caller rate limits).

``tokens`` is the level at time ``at``; the level now is that plus what refilled since,
capped at ``burst``. A pause (a provider's 429 with Retry-After) empties the bucket and
moves ``at`` to the pause's end: until then the level stays at zero. A bucket never
written yet (``at`` None) is full.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Bucket:
    tokens: float
    at: datetime | None


@dataclass(frozen=True)
class TokenBucket:
    rate_per_s: float = 20.0
    """Long-run calls per second."""
    burst: float = 40.0
    """Calls that may start at once after a quiet spell."""

    def level(self, b: Bucket, now: datetime) -> float:
        if b.at is None:
            return self.burst
        if now <= b.at:  # paused by a Retry-After that has not passed yet
            return min(b.tokens, self.burst)
        return min(self.burst, b.tokens + (now - b.at).total_seconds() * self.rate_per_s)

    def available(self, b: Bucket, now: datetime) -> int:
        """Whole calls that may start now."""
        return max(0, math.floor(self.level(b, now)))

    def spend(self, b: Bucket, n: int, now: datetime) -> Bucket:
        """The bucket after ``n`` calls started now (a pause in place stays in place)."""
        at = b.at if b.at is not None and b.at > now else now
        return Bucket(max(0.0, self.level(b, now) - n), at)

    def pause(self, b: Bucket, retry_after_s: float, now: datetime) -> Bucket:
        """Empty the bucket until ``now + retry_after_s`` (a later pause already in place
        stays)."""
        until = now + timedelta(seconds=max(0.0, retry_after_s))
        if b.at is not None and b.at > until:
            until = b.at
        return Bucket(0.0, until)

    def wait_s(self, b: Bucket, now: datetime) -> float:
        """Seconds until one token is available (0 if one is now)."""
        level = self.level(b, now)
        if level >= 1:
            return 0.0
        paused = (b.at - now).total_seconds() if b.at is not None and b.at > now else 0.0
        return paused + (1 - level) / self.rate_per_s
