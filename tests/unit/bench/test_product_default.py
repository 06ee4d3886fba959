"""The bench drives the allocator's own default policy object (no copy of its logic),
playing the voices table's part: the replay's results are the product's decisions."""

from __future__ import annotations

from slot_economy.adapters import ProductDefault
from slot_economy.replay import replay
from slot_economy.traces import Request, Trace

from allocator_svc.domain.adaptive import Adaptive


def test_it_is_the_allocators_default_policy_object() -> None:
    policy = ProductDefault(2).policy
    assert type(policy) is Adaptive
    assert policy.max_wait_s == 30.0  # AllocatorConfig's default reclaim_max_wait_s


def test_one_off_voices_rotate_while_a_popular_one_stays() -> None:
    # Voice 0 asked every 10 s, the others once each; 2 slots.
    reqs = []
    for i in range(200):
        reqs.append(Request(10.0 * i, 0, 0, 0.0))
        reqs.append(Request(10.0 * i + 5, 1 + i, 1 + i, 0.0))
    result = replay(Trace("t", reqs, 2), ProductDefault(2))
    assert result.clones == 201  # voice 0 once, every one-off once


def test_a_newcomer_waits_for_a_live_session_rather_than_evicting_it() -> None:
    # Earlier sessions teach the shape (ten requests 5 s apart, each on its own voice).
    reqs = [Request(1_000.0 * s + 5 * k, s, s, 1.0) for s in range(1, 8) for k in range(10)]
    # One slot; voice 100 speaks every 5 s from 9_000 to 9_045; voice 200 asks at 9_012.
    reqs += [Request(9_000.0 + 5 * k, 100, 100, 1.0) for k in range(10)]
    reqs.append(Request(9_012.0, 200, 200, 1.0))
    reqs.sort(key=lambda r: r.t)
    result = replay(Trace("t", reqs, 1), ProductDefault(1))
    assert result.waited == 1
    # It waited, but no longer than the bound: 30 s from its arrival.
    assert 0 < result.wait_max <= 30.0 + 1e-6
