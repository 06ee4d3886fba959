"""Per-provider circuit breaker: stop sending clones to a provider that keeps failing.

The state is plain values stored on the provider's row, so every replica reads and
writes the same breaker; these functions only decide. A breaker is

- ``closed``: calls flow; consecutive failures are counted and ``failure_threshold`` of
  them open it.
- ``open``: no calls until ``open_until`` (now + ``cooldown``).
- ``half_open``: the cool-down is over and exactly one probe call is out. Its success
  closes the breaker, its failure opens it again. ``open_until`` doubles as the probe's
  deadline: if the replica that sent the probe died, another probe is allowed once it
  passes, so a lost probe can never wedge the breaker half-open for good.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class ProviderOutcome(StrEnum):
    """How a provider call went, as far as the provider's health is concerned."""

    OK = "ok"
    """It answered coherently (including a refusal of this one request: bad sample,
    account full); the provider itself is healthy."""
    UNHEALTHY = "unhealthy"
    """5xx, timeout, connection error, bad credentials, nonsense answers: counts
    against the breaker."""
    THROTTLED = "throttled"
    """429: pause the token bucket for Retry-After; not a breaker failure."""


@dataclass(frozen=True)
class Breaker:
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    """Consecutive failures (since the last success)."""
    open_until: datetime | None = None


@dataclass(frozen=True)
class BreakerPolicy:
    failure_threshold: int = 5
    cooldown: timedelta = timedelta(seconds=30)
    probe_timeout: timedelta = timedelta(seconds=60)
    """How long a half-open probe may take before another one is allowed."""

    def admit(self, b: Breaker, now: datetime) -> tuple[Breaker, int | None]:
        """The breaker after deciding, and how many calls may start now (None: no limit).

        The caller must store the returned breaker when it starts a probe, in the same
        transaction that claims the work, so that two replicas cannot both probe.
        """
        if b.state == BreakerState.CLOSED:
            return b, None
        if b.open_until is not None and now < b.open_until:
            return b, 0  # open and cooling down, or a probe is out
        return Breaker(BreakerState.HALF_OPEN, b.failures, now + self.probe_timeout), 1

    def probe_started(self, b: Breaker, started: int) -> bool:
        """Whether the breaker returned by ``admit`` must be stored: only when a probe was
        actually sent (an unused half-open admission changes nothing)."""
        return b.state == BreakerState.HALF_OPEN and started > 0

    def record(self, b: Breaker, outcome: ProviderOutcome, now: datetime) -> Breaker:
        """The breaker after a call ended with ``outcome``."""
        if outcome == ProviderOutcome.THROTTLED:
            return b
        if outcome == ProviderOutcome.OK:
            return Breaker()
        failures = b.failures + 1
        if b.state == BreakerState.HALF_OPEN or (
            b.state == BreakerState.CLOSED and failures >= self.failure_threshold
        ):
            return Breaker(BreakerState.OPEN, failures, now + self.cooldown)
        # Closed below the threshold, or a late failure of a call sent before the breaker
        # opened: count it, keep the cool-down already running.
        return Breaker(b.state, failures, b.open_until)
