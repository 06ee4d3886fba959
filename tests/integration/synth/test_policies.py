"""The synthesizer's pure decisions: how long a call may wait before it must answer, how
often leases are renewed, which failures a batch item retries. No I/O (these would sit in
tests/unit; they live here because this folder is the synthesizer's)."""

from __future__ import annotations

import pytest

from synth_svc.domain.timing import renew_every_s, wait_budget_s
from synth_svc.repository import ClaimedItem
from synth_svc.worker import audio_key, is_transient
from voiceslot import errors
from voiceslot.providers.errors import (
    AuthError,
    CapacityFull,
    InvalidInput,
    RateLimited,
    Transient,
    VoiceNotFound,
)


@pytest.mark.parametrize(
    ("remaining", "budget"),
    [
        (None, 30.0),  # no client deadline: the default wait
        (60.0, 59.0),  # 10 % kept back, at most 1 s
        (5.0, 4.5),
        (2.0, 1.75),  # at least 0.25 s
        (0.25, 0.0),
        (0.1, 0.0),  # no time left to wait: answer at once
        (-3.0, 0.0),
    ],
)
def test_wait_budget_leaves_time_to_answer(remaining, budget):
    assert wait_budget_s(remaining, default_s=30.0) == pytest.approx(budget)


def test_wait_budget_is_monotonic_and_below_the_deadline():
    budgets = [wait_budget_s(r / 10, default_s=30.0) for r in range(0, 1000)]
    assert budgets == sorted(budgets)
    assert all(b < r / 10 or b == 0 for r, b in zip(range(0, 1000), budgets, strict=True))


def test_renewals_come_three_times_per_lease():
    assert renew_every_s(60.0) == 20.0 and renew_every_s(1.5) == 0.5


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (Transient("503"), True),
        (RateLimited("429", retry_after=2), True),
        (CapacityFull("full"), True),
        (errors.Unavailable("engine busy"), True),
        (errors.QuotaExceeded("no slot yet"), True),
        (OSError(28, "No space left on device"), True),
        (InvalidInput("400 text refused"), False),
        (VoiceNotFound("404"), False),
        (AuthError("401"), False),
        (errors.NotFound("voice", "v_1"), False),
        (errors.InvalidArgument("text", "is empty"), False),
        (ValueError("a bug"), False),
    ],
)
def test_which_failures_an_item_retries(exc, transient):
    assert is_transient(exc) is transient


def test_audio_keys_are_built_from_our_ids_only():
    claim = ClaimedItem(
        "it_" + "a" * 32, "job_" + "b" * 32, "v_1", "admin", "text", "opus", 0, 1, "tok"
    )
    assert audio_key(claim) == f"audio/job_{'b' * 32}/it_{'a' * 32}.ogg"
