"""Retry, reclaim and provider-outcome decisions, on plain values."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from allocator_svc.domain.breaker import ProviderOutcome
from allocator_svc.domain.reclaim import LeastRecentlyUsed, ProviderPressure, SlotCandidate
from allocator_svc.domain.retry import RetryPolicy
from allocator_svc.lifecycle import provider_outcome
from allocator_svc.maintenance import parse_label
from voiceslot.providers import errors as pe

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_retry_dead_letters_after_max_attempts_or_at_once_when_fatal():
    p = RetryPolicy(max_attempts=3)
    assert not p.should_dead_letter(2, retryable=True)
    assert p.should_dead_letter(3, retryable=True)
    assert p.should_dead_letter(1, retryable=False)


def test_retry_delay_is_jittered_under_a_cap_and_never_below_retry_after():
    p = RetryPolicy(base_s=1.0, max_s=8.0)
    rng = random.Random(1)
    delays = [p.delay(6, rng=rng) for _ in range(200)]
    assert min(delays) >= 0 and max(delays) <= 8.0 and len(set(delays)) > 100
    assert all(p.delay(1, rng=rng, retry_after=30.0) == 30.0 for _ in range(20))


def candidate(vid: str, used_s: float | None, *, ready_s: float = 0, **kw) -> SlotCandidate:
    used = None if used_s is None else T0 + timedelta(seconds=used_s)
    values = {"pinned": False, "active_leases": 0, **kw}
    return SlotCandidate(vid, used, T0 + timedelta(seconds=ready_s), **values)


def test_lru_takes_one_victim_per_waiting_request_beyond_free_slots():
    lru = LeastRecentlyUsed(min_residency=timedelta(seconds=10))
    pool = [candidate("a", 50), candidate("b", 20), candidate("c", None, ready_s=30)]
    now = T0 + timedelta(seconds=100)
    assert lru.choose(pool, ProviderPressure(0, 0, None), now=now) == []
    assert lru.choose(pool, ProviderPressure(2, 1, None), now=now) == ["b"]
    assert lru.choose(pool, ProviderPressure(5, 0, None), now=now) == ["b", "c", "a"]


def test_lru_spares_leased_pinned_and_fresh_voices_and_the_clone_budget():
    lru = LeastRecentlyUsed(min_residency=timedelta(seconds=10), add_edit_reserve=1)
    pool = [
        candidate("leased", 1, active_leases=1),
        candidate("pinned", 1, pinned=True),
        candidate("fresh", 1, ready_s=95),
        candidate("old", 2),
    ]
    now = T0 + timedelta(seconds=100)
    assert lru.choose(pool, ProviderPressure(4, 0, None), now=now) == ["old"]
    assert lru.choose(pool, ProviderPressure(4, 0, 1), now=now) == []


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, ProviderOutcome.OK),
        (pe.RateLimited("429", retry_after=3), ProviderOutcome.THROTTLED),
        (pe.Transient("503"), ProviderOutcome.UNHEALTHY),
        (pe.AuthError("401"), ProviderOutcome.UNHEALTHY),
        (pe.AddEditBudgetSpent("month over"), ProviderOutcome.UNHEALTHY),
        (pe.Fatal("nonsense"), ProviderOutcome.UNHEALTHY),
        (pe.InvalidInput("bad sample"), ProviderOutcome.OK),
        (pe.CapacityFull("full"), ProviderOutcome.OK),
        (pe.VoiceNotFound("gone"), ProviderOutcome.OK),
    ],
)
def test_provider_errors_are_classified_for_the_breaker(error, outcome):
    assert provider_outcome(error) == outcome


def test_remote_labels_parse_back_to_voice_and_generation():
    assert parse_label("vs-", "vs-v_abc-g12") == ("v_abc", 12)
    assert parse_label("vs-", "other-v_abc-g1") is None
    assert parse_label("vs-", "vs-nogeneration") is None
