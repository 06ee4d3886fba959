"""The rules of a live turn: what the server does while waiting for the next message, and
the errors each bound and protocol slip ends the turn with (naming the setting)."""

from __future__ import annotations

import pytest

from synth_svc.domain.formats import OutputFormat
from synth_svc.domain.live import (
    End,
    Expiry,
    Flush,
    Start,
    Text,
    check_buffered,
    check_first,
    check_fragment,
    check_next,
    expired,
    next_expiry,
    too_fast,
)
from voiceslot.config import LiveConfig
from voiceslot.errors import DeadlineExceeded, InvalidArgument, QuotaExceeded

LIMITS = LiveConfig(idle_flush_s=1.5, idle_end_s=30.0, max_turn_s=600.0)
START = Start("v_1", OutputFormat("wav", 0))


def test_buffered_text_is_flushed_after_the_idle_flush_spell() -> None:
    wait, what = next_expiry(
        now=10.5, turn_started=0.0, last_message=10.0, buffered=True, limits=LIMITS
    )
    assert (wait, what) == (1.0, Expiry.IDLE_FLUSH)


def test_with_nothing_buffered_only_the_idle_end_is_waited_for() -> None:
    wait, what = next_expiry(
        now=10.5, turn_started=0.0, last_message=10.0, buffered=False, limits=LIMITS
    )
    assert (wait, what) == (29.5, Expiry.IDLE_END)


def test_the_turn_limit_wins_when_it_comes_first() -> None:
    wait, what = next_expiry(
        now=599.0, turn_started=0.0, last_message=598.9, buffered=True, limits=LIMITS
    )
    assert (wait, what) == (pytest.approx(1.0), Expiry.TURN)


def test_a_deadline_already_passed_is_no_wait_not_a_negative_one() -> None:
    wait, _ = next_expiry(
        now=700.0, turn_started=0.0, last_message=0.0, buffered=False, limits=LIMITS
    )
    assert wait == 0.0


@pytest.mark.parametrize("first", [Text("hi"), Flush(), End(), None])
def test_the_first_message_must_be_start(first) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_first(first)
    assert caught.value.field == "start"
    assert check_first(START) is START


def test_a_second_start_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="twice"):
        check_next(START)
    assert check_next(Flush()) == Flush()


def test_each_bound_names_its_setting() -> None:
    with pytest.raises(InvalidArgument, match=r"synth\.live\.max_fragment_chars"):
        check_fragment("x" * (LIMITS.max_fragment_chars + 1), LIMITS)
    check_fragment("x" * LIMITS.max_fragment_chars, LIMITS)
    with pytest.raises(QuotaExceeded, match=r"synth\.live\.max_buffered_chars"):
        check_buffered(LIMITS.max_buffered_chars + 1, LIMITS)
    check_buffered(LIMITS.max_buffered_chars, LIMITS)
    assert "synth.live.max_fragments_per_s" in str(too_fast(LIMITS, 0.5))
    assert too_fast(LIMITS, 0.5).retry_after == 0.5
    for what in (Expiry.IDLE_END, Expiry.TURN):
        error = expired(what, LIMITS)
        assert isinstance(error, DeadlineExceeded)
        assert f"synth.live.{what.value}" in str(error)
