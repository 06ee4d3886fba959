"""The adaptive reclaim policy on plain values: its statistics (``domain.usage``), its
ranking, when it lets a request wait, the hard rules (pinned, leased, residency, budget
reserve, only as many evictions as waiting requests), and the setting that picks it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from allocator_svc.domain.adaptive import Adaptive, Decision, Resident
from allocator_svc.domain.policies import reclaim_policy
from allocator_svc.domain.reclaim import LeastRecentlyUsed, ProviderPressure, SlotCandidate
from allocator_svc.domain.usage import HALF_LIFE_S, SessionShape, VoiceUsage, observe
from allocator_svc.service import default_reclaim_policy
from voiceslot.config import AllocatorConfig

POLICY = Adaptive(min_residency=timedelta(0))


def history(
    times: list[float], shape: SessionShape | None = None
) -> tuple[VoiceUsage, SessionShape]:
    u, sh, last = VoiceUsage(), shape or SessionShape(since=0.0), None
    for t in times:
        after = observe(u, last, t)
        sh, u, last = sh.add(u, after), after, t
    return u, sh


def resident(voice: str, times: list[float], **kw: object) -> Resident:
    u, _ = history(times)
    return Resident(voice, u, times[-1] if times else None, 0.0, **kw)  # type: ignore[arg-type]


def test_observe_counts_requests_continuations_bursts_and_decays_the_count() -> None:
    u, shape = history([0.0, 10.0, 20.0, 500.0, 505.0])
    assert (u.requests, u.continued, u.burst, u.sessions) == (5, 3, 2, 2)
    assert u.gap_sum == pytest.approx(10 + 10 + 5)
    ages = [505.0, 495.0, 485.0, 5.0, 0.0]
    assert u.freq == pytest.approx(sum(0.5 ** (a / HALF_LIFE_S) for a in ages), rel=1e-9)
    assert u.expected > 0  # the burst at 500 began after a gap
    # The provider's shape is the voices' sums: two bursts began, both went on.
    assert (shape.starts, shape.starts_continued, shape.gap_n) == (2, 2, 3)


def test_evicts_the_voice_least_likely_to_be_wanted_never_pinned_or_leased() -> None:
    now = 10_000.0
    popular = resident("popular", [now - 90 * k for k in range(40, 0, -1)])  # every 90 s
    rare = resident("rare", [now - 5_000])
    pinned = resident("pinned", [now - 6_000], pinned=True)
    leased = resident("leased", [now - 7_000], active_leases=1)
    d = POLICY.decide(
        [popular, rare, pinned, leased],
        SessionShape(since=0.0),
        wanted=1,
        oldest_waiting_since=now,
        now=now,
    )
    assert d == Decision(("rare",), None)


def test_a_popular_voice_outranks_a_rare_one_used_more_recently() -> None:
    now = 10_000.0
    popular = resident("popular", [now - 3_000 + 90 * k for k in range(30)])
    rare = resident("rare", [now - 100])  # LRU would evict popular (last used at 9_610)
    d = POLICY.decide(
        [popular, rare], SessionShape(since=0.0), wanted=1, oldest_waiting_since=now, now=now
    )
    assert d.evict == ("rare",)


def test_a_request_waits_for_a_live_session_but_not_beyond_max_wait() -> None:
    shape = SessionShape(since=0.0)
    for s in range(30):  # sessions of 20 requests 5 s apart, on many voices
        _, shape = history([s * 1000.0 + 5 * k for k in range(20)], shape)
    now = 50_000.0
    live = resident("live", [now - 7.0, now - 2.0])
    d = POLICY.decide([live], shape, wanted=1, oldest_waiting_since=now, now=now)
    assert d.evict == ()
    assert d.retry_at is not None and now < d.retry_at <= now + POLICY.max_wait_s
    late = POLICY.decide(
        [live], shape, wanted=1, oldest_waiting_since=now - POLICY.max_wait_s, now=now
    )
    assert late.evict == ("live",)


def test_residency_and_need_bound_the_evictions() -> None:
    now = 1_000.0
    young = Resident("young", VoiceUsage(), None, ready_since=now - 5)
    old = Resident("old", VoiceUsage(), None, ready_since=0.0)
    policy = Adaptive(min_residency=timedelta(seconds=10))
    d = policy.decide([young, old], SessionShape(), wanted=2, oldest_waiting_since=now, now=now)
    assert d.evict == ("old",)
    assert d.retry_at == now + 5  # decide again when young comes of age
    assert policy.decide([old], SessionShape(), wanted=0, oldest_waiting_since=None, now=now) == (
        Decision((), None)
    )


def test_choose_keeps_the_add_edit_reserve_and_counts_reclaims_in_flight() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    cands = [
        SlotCandidate(v, at, at - timedelta(hours=1), False, 0, usage=VoiceUsage())
        for v in ("a", "b", "c")
    ]
    policy = Adaptive(add_edit_reserve=5)
    assert policy.choose(cands, ProviderPressure(3, 0, 5), now=at) == []
    assert len(policy.choose(cands, ProviderPressure(3, 0, 7), now=at)) == 2
    assert len(policy.choose(cands, ProviderPressure(3, 0, None, reclaiming=2), now=at)) == 1
    assert policy.choose(cands, ProviderPressure(1, 1, None), now=at) == []


def test_the_setting_picks_the_policy_and_carries_its_bounds() -> None:
    default = default_reclaim_policy(AllocatorConfig())
    assert isinstance(default, Adaptive)
    assert default.min_residency == timedelta(seconds=10) and default.max_wait_s == 30.0
    lru = default_reclaim_policy(
        AllocatorConfig(reclaim_policy="lru", idle_reclaim_after_s=2, add_edit_reserve=3)
    )
    assert lru == LeastRecentlyUsed(min_residency=timedelta(seconds=2), add_edit_reserve=3)
    with pytest.raises(ValueError, match="reclaim_policy: unknown policy 'mru'"):
        reclaim_policy("mru")
