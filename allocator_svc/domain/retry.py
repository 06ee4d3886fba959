"""Retry policy for allocation requests: exponential backoff with full jitter, a cap,
and dead-lettering after a number of attempts. The delay is stored as the request's
``run_at``, so a restart loses no schedule."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    """Attempts before a request is dead-lettered."""
    base_s: float = 1.0
    """Delay scale of the first retry."""
    max_s: float = 300.0
    """No retry waits longer than this (before a provider's own Retry-After)."""

    def should_dead_letter(self, attempts: int, *, retryable: bool) -> bool:
        return not retryable or attempts >= self.max_attempts

    def delay(
        self, attempts: int, *, rng: random.Random, retry_after: float | None = None
    ) -> float:
        """Seconds to wait before attempt ``attempts + 1``.

        Full jitter (uniform in [0, base·2^(n-1)]) spreads retries of many requests that
        failed together; a provider's Retry-After is a floor, never shortened by jitter.
        """
        ceiling = min(self.max_s, self.base_s * 2 ** max(0, attempts - 1))
        delay = rng.uniform(0, ceiling)
        return max(delay, retry_after or 0.0)
