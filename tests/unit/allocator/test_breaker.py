"""The circuit breaker's decisions, on plain values and explicit times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from allocator_svc.domain.breaker import Breaker, BreakerPolicy, BreakerState, ProviderOutcome

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = BreakerPolicy(
    failure_threshold=3, cooldown=timedelta(seconds=30), probe_timeout=timedelta(seconds=10)
)
OK, BAD, SLOW = ProviderOutcome.OK, ProviderOutcome.UNHEALTHY, ProviderOutcome.THROTTLED


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_closed_admits_without_limit_and_opens_at_the_threshold():
    b = Breaker()
    assert POLICY.admit(b, T0) == (b, None)
    b = POLICY.record(b, BAD, s(1))
    b = POLICY.record(b, BAD, s(2))
    assert b == Breaker(BreakerState.CLOSED, 2, None)
    b = POLICY.record(b, BAD, s(3))
    assert b == Breaker(BreakerState.OPEN, 3, s(33))


def test_a_success_resets_the_count_of_consecutive_failures():
    b = POLICY.record(POLICY.record(Breaker(), BAD, T0), BAD, T0)
    b = POLICY.record(b, OK, T0)
    assert b == Breaker()
    assert POLICY.record(POLICY.record(b, BAD, T0), BAD, T0).state == BreakerState.CLOSED


def test_throttling_is_not_a_failure():
    b = Breaker(BreakerState.CLOSED, 2, None)
    assert POLICY.record(b, SLOW, T0) == b


def test_open_admits_nothing_until_the_cooldown_then_one_probe():
    b = Breaker(BreakerState.OPEN, 3, s(30))
    assert POLICY.admit(b, s(29.9)) == (b, 0)
    after, n = POLICY.admit(b, s(30))
    assert n == 1 and after == Breaker(BreakerState.HALF_OPEN, 3, s(40))
    assert POLICY.probe_started(after, 1) and not POLICY.probe_started(after, 0)
    assert not POLICY.probe_started(Breaker(), 5)


def test_half_open_admits_no_second_probe_until_the_first_is_overdue():
    b = Breaker(BreakerState.HALF_OPEN, 3, s(40))
    assert POLICY.admit(b, s(39)) == (b, 0)
    after, n = POLICY.admit(b, s(41))  # the probing replica died: probe again
    assert n == 1 and after.open_until == s(51)


def test_the_probe_decides():
    probing = Breaker(BreakerState.HALF_OPEN, 3, s(40))
    assert POLICY.record(probing, OK, s(35)) == Breaker()
    assert POLICY.record(probing, BAD, s(35)) == Breaker(BreakerState.OPEN, 4, s(65))


def test_a_late_failure_keeps_the_cooldown_running():
    b = Breaker(BreakerState.OPEN, 3, s(30))
    assert POLICY.record(b, BAD, s(10)) == Breaker(BreakerState.OPEN, 4, s(30))
