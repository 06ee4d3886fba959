"""The five reference policies on sequences small enough to check by hand (each case's
comment is the hand trace), plus the rule they share: a leased voice is never evicted."""

from __future__ import annotations

import pytest
from slot_economy.belady import Belady
from slot_economy.policies import (
    ARC,
    LRU,
    REFERENCE_POLICIES,
    S3FIFO,
    SIEVE,
    AdmitContext,
    WTinyLFU,
)
from slot_economy.traces import Request

from .helpers import A, B, C, D, E, drive


def test_lru_evicts_the_least_recently_used() -> None:
    # a b | a hit -> order b a | c evicts b -> a c | b evicts a
    assert drive(LRU(2), [A, B, A, C, B], 2) == ([B, A], 4)


def test_sieve_keeps_its_hand_where_it_stopped() -> None:
    # a b c; hit a; d: hand clears a, evicts b, rests on c; hit c;
    # e: hand clears c, evicts d (newer than a) — where LRU would evict a.
    assert drive(SIEVE(3), [A, B, C, A, D, C, E], 3) == ([B, D], 5)
    assert drive(LRU(3), [A, B, C, A, D, C, E], 3) == ([B, A], 5)


def test_arc_ghost_hits_move_the_target() -> None:
    # c=2: a b; hit a -> T1 [b] T2 [a]; c: REPLACE (|T1| 1 > p 0) evicts b to B1;
    # b in B1: p -> 1, REPLACE (|T1| 1 not > 1) evicts a from T2 to B2, b -> T2;
    # a in B2: p -> 0, REPLACE evicts c from T1.
    arc = ARC(2)
    assert drive(arc, [A, B, A, C, B, A], 2) == ([B, A, C], 5)
    assert arc.p == 0
    assert list(arc.t2) == [B, A]
    assert list(arc.b1) == [C]


def test_arc_drops_t1_lru_without_ghost_when_t1_is_the_cache() -> None:
    arc = ARC(2)
    assert drive(arc, [A, B, C], 2) == ([A], 3)
    assert not arc.b1


def test_s3fifo_small_queue_ghost_and_main_reinsertion() -> None:
    # slots 2: small target 1, ghost 1. a b; c: a (freq 0) leaves small for ghost;
    # a (ghost hit) -> main, b evicted from small; hit a (freq 1); d: c evicted;
    # hit d; e: d moves to main (freq 0), small empty -> main: a (freq 1) reinserted
    # with freq 0, d evicted.
    s3 = S3FIFO(2)
    assert drive(s3, [A, B, C, A, A, D, D, E], 2) == ([A, B, C, D], 6)
    assert list(s3.main) == [A]
    assert list(s3.small) == [E]


def test_w_tinylfu_admits_the_window_victim_only_if_more_frequent() -> None:
    # slots 10: window 1. 0..9 fill (0..8 overflow to probation), 0 hit twice (protected);
    # 10: window victim 9 (count 1) vs probation victim 1 (count 1): 9 rejected;
    # hit 10 twice (count 3); 11: 10 (3) beats 1 (1): 1 evicted, 10 to probation.
    seq = [*range(10), 0, 0, 10, 10, 10, 11]
    w = WTinyLFU(10)
    assert drive(w, seq, 10) == ([9, 1], 12)
    assert 10 in w.probation and 0 in w.protected


def test_belady_evicts_the_voice_needed_farthest_ahead() -> None:
    seq = [A, B, C, A, B, A]
    # c: a next at 3, b at 4 -> evict b; b: a next at 5, c never -> evict c
    assert drive(Belady(2, [Request(float(i), v, v, 0.0) for i, v in enumerate(seq)]), seq, 2) == (
        [B, C],
        4,
    )
    assert drive(LRU(2), seq, 2)[1] == 5


@pytest.mark.parametrize("name", sorted(REFERENCE_POLICIES))
def test_no_reference_policy_evicts_a_leased_voice(name: str) -> None:
    policy = REFERENCE_POLICIES[name](3)
    drive(policy, [A, B, C], 3)  # warm: a b c resident
    for hits in ([A, A], [B], [C, C, C]):
        for h in hits:
            policy.hit(h, 3.0)
    leased = {A, B}
    ctx = AdmitContext(
        now=4.0,
        free_slots=0,
        evictable=lambda v: v not in leased,
        residents={A, B, C},
        lease_until={A: 9.0, B: 9.0},
        waiting_since=4.0,
        backlog=1,
    )
    assert policy.admit(D, ctx) == C


@pytest.mark.parametrize("name", sorted(REFERENCE_POLICIES))
def test_reference_policies_stay_within_slots_on_a_longer_sequence(name: str) -> None:
    import random

    rng = random.Random(7)
    seq = [min(int(rng.paretovariate(1.0)), 40) for _ in range(2000)]
    victims, clones = drive(REFERENCE_POLICIES[name](5), seq, 5)
    belady = drive(Belady(5, [Request(float(i), v, v, 0.0) for i, v in enumerate(seq)]), seq, 5)[1]
    assert clones >= belady  # nothing beats the offline optimum without leases
    assert clones == len(victims) + 5
