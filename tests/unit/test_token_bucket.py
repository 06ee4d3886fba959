"""The token bucket's arithmetic, on plain values and explicit times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from voiceslot.token_bucket import Bucket, TokenBucket

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TB = TokenBucket(rate_per_s=2.0, burst=4.0)


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_row_never_written_is_a_full_bucket():
    assert TB.available(Bucket(0.0, None), T0) == 4


def test_spending_then_refilling_up_to_the_burst():
    b = TB.spend(Bucket(0.0, None), 3, T0)
    assert b == Bucket(1.0, T0)
    assert TB.available(b, s(0.4)) == 1  # 1.8
    assert TB.available(b, s(0.5)) == 2
    assert TB.available(b, s(100)) == 4
    assert TB.wait_s(TB.spend(b, 1, T0), T0) == pytest.approx(0.5)


def test_a_pause_empties_the_bucket_until_retry_after_then_refills():
    b = TB.pause(Bucket(4.0, T0), 7.0, T0)
    assert b == Bucket(0.0, s(7))
    assert TB.available(b, s(6.99)) == 0
    assert TB.wait_s(b, s(1)) == pytest.approx(6.5)
    assert TB.available(b, s(7.5)) == 1
    # Spending during a pause is impossible, and the pause survives a spend of nothing.
    assert TB.spend(b, 0, s(3)) == Bucket(0.0, s(7))


def test_a_shorter_pause_never_cuts_a_longer_one():
    b = TB.pause(Bucket(0.0, None), 10.0, T0)
    assert TB.pause(b, 1.0, s(2)).at == s(10)
    assert TB.pause(b, 20.0, s(2)).at == s(22)
