"""The candidate policy on plain values: its statistics, its ranking, when it waits, and
the hard rules (pinned, leased, budget, only as many evictions as waiting requests)."""

from __future__ import annotations

from slot_economy import candidate as c
from slot_economy.adapters import CandidateDriver
from slot_economy.replay import replay
from slot_economy.traces import Request, Trace

CFG = c.CandidateConfig()


def history(times: list[float], lease: float = 0.0) -> tuple[c.VoiceHistory, c.ProviderHistory]:
    h, p = c.VoiceHistory(), c.ProviderHistory()
    for t in times:
        h, p = c.observe(h, p, t, CFG, lease_s=lease)
    return h, p


def test_observe_counts_requests_continuations_and_bursts() -> None:
    h, p = history([0.0, 10.0, 20.0, 500.0], lease=2.0)
    assert (h.requests, h.continued, h.burst) == (4, 2, 1)
    assert h.released_at == 502.0
    # two bursts began (at 0 and 500); the first went on
    assert p.starts == pytest_approx(1 * 0.5 ** (500 / CFG.half_life_s) + 1, rel=1e-6)
    # gaps of 8 s each, counted from the end of the lease (sum and count decay alike)
    assert p.gap_sum / p.gap_n == pytest_approx(8.0, rel=0.01)
    # the decayed count is the sum of 2^(-age / half-life)
    ages = [500.0, 490.0, 480.0, 0.0]
    assert h.freq == pytest_approx(sum(0.5 ** (a / CFG.half_life_s) for a in ages), rel=1e-9)


def pytest_approx(x: float, rel: float):  # noqa: ANN201 - pytest's own type is private
    import pytest

    return pytest.approx(x, rel=rel)


def cand(voice: str, h: c.VoiceHistory, **kw: object) -> c.Candidate:
    return c.Candidate(voice_id=voice, history=h, ready_since=0.0, **kw)  # type: ignore[arg-type]


def test_evicts_the_voice_least_likely_to_be_wanted_and_never_pinned_or_leased() -> None:
    now = 10_000.0
    popular, _ = history([now - 60 * k for k in range(1, 40)])  # once a minute
    rare, p = history([now - 5_000])
    pinned_rare, _ = history([now - 6_000])
    leased_rare, _ = history([now - 7_000])
    cands = [
        cand("popular", popular),
        cand("rare", rare),
        cand("pinned", pinned_rare, pinned=True),
        cand("leased", leased_rare, active_leases=1),
    ]
    pressure = c.Pressure(backlog=1, free_slots=0, oldest_waiting_since=now)
    assert c.decide(cands, p, pressure, now, CFG) == c.Decision(("rare",), None)


def test_no_eviction_without_need_or_beyond_the_budget_reserve() -> None:
    h, p = history([0.0])
    cands = [cand("a", h), cand("b", h)]
    at = 10_000.0
    assert c.decide(cands, p, c.Pressure(1, 1, at), at, CFG).evict == ()
    assert c.decide(cands, p, c.Pressure(3, 0, at, reclaiming=2), at, CFG).evict == ("a",)
    budget = c.CandidateConfig(add_edit_reserve=5)
    assert c.decide(cands, p, c.Pressure(2, 0, at, add_edit_remaining=5), at, budget).evict == ()
    assert (
        len(c.decide(cands, p, c.Pressure(2, 0, at, add_edit_remaining=6), at, budget).evict) == 1
    )


def test_a_request_waits_for_a_live_session_but_not_beyond_max_wait() -> None:
    # Provider history full of sessions: bursts of 20 requests 5 s apart.
    h, p = c.VoiceHistory(), c.ProviderHistory()
    for s in range(30):
        for k in range(20):
            h, p = c.observe(c.VoiceHistory() if k == 0 else h, p, s * 1000.0 + 5 * k, CFG)
    now = 50_000.0
    live, p = c.observe(c.VoiceHistory(), p, now - 2.0, CFG)  # a session that just began
    live, p = c.observe(live, p, now - 1.0, CFG)
    pressure = c.Pressure(backlog=1, free_slots=0, oldest_waiting_since=now)
    d = c.decide([cand("live", live)], p, pressure, now, CFG)
    assert d.evict == ()
    assert d.retry_at is not None and now < d.retry_at <= now + CFG.max_wait_s
    late = c.Pressure(backlog=1, free_slots=0, oldest_waiting_since=now - CFG.max_wait_s)
    assert c.decide([cand("live", live)], p, late, now, CFG).evict == ("live",)


def test_one_off_voices_rotate_while_popular_ones_stay() -> None:
    # Zipf-like: voice 0 asked every 10 s, the others once each; 2 slots.
    reqs = []
    for i in range(200):
        reqs.append(Request(10.0 * i, 0, 0, 0.0))
        reqs.append(Request(10.0 * i + 5, 1 + i, 1 + i, 0.0))
    result = replay(Trace("t", reqs, 2), CandidateDriver(2))
    assert result.clones == 201  # voice 0 once, every one-off once
