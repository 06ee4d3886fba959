"""When a batcher (the lease grant's, completions') may send another batch
(``may_start_batch``)."""

from __future__ import annotations

from voiceslot.batching import STALL_FACTOR, STALL_MIN_S, may_start_batch


def test_a_batch_goes_at_once_when_none_is_out():
    assert may_start_batch(0, last_started_s=0.0, now_s=0.0, typical_s=1.0, cap=4)


def test_one_batch_out_makes_the_rest_wait_while_it_takes_its_usual_time():
    typical = 0.005
    assert not may_start_batch(1, 0.0, typical, typical, cap=4)
    assert not may_start_batch(1, 0.0, STALL_FACTOR * typical * 0.9, typical, cap=4)


def test_a_batch_out_for_long_lets_another_go():
    typical = 0.005
    assert may_start_batch(1, 0.0, STALL_FACTOR * typical, typical, cap=4)


def test_fast_statements_still_wait_the_minimum():
    typical = 0.0001
    assert not may_start_batch(1, 0.0, STALL_MIN_S / 2, typical, cap=4)
    assert may_start_batch(1, 0.0, STALL_MIN_S, typical, cap=4)


def test_never_more_than_the_cap():
    assert not may_start_batch(4, 0.0, 1000.0, 0.001, cap=4)
