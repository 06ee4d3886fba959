"""Time budgets of the synthesizer: how long a call may wait, how long a batch item's claim
lasts. Pure.

Why a budget smaller than the caller's deadline: a call that waits for a slot must still
answer RESOURCE_EXHAUSTED with RetryInfo *before* the caller's deadline passes. An answer
sent at the deadline arrives after it, and the caller sees a bare DEADLINE_EXCEEDED with no
hint of when to come back.
"""

from __future__ import annotations

ANSWER_SHARE = 0.1
"""Share of the caller's remaining time kept back for sending the answer."""
ANSWER_MIN_S = 0.25
"""At least this much: on a busy machine an answer can take a couple of hundred ms."""
ANSWER_MAX_S = 1.0


def wait_budget_s(remaining_s: float | None, *, default_s: float) -> float:
    """Seconds a call may spend before it must answer: the caller's remaining time less a
    margin for the answer to travel back (10 %, within 0.25–1 s); ``default_s`` when the
    caller set no deadline. Never negative."""
    if remaining_s is None:
        return default_s
    margin = min(ANSWER_MAX_S, max(ANSWER_MIN_S, remaining_s * ANSWER_SHARE))
    return max(0.0, remaining_s - margin)


def renew_every_s(lease_s: float) -> float:
    """How often a lease of ``lease_s`` is extended: three chances before it lapses, so one
    slow or failed renewal does not lose it."""
    return lease_s / 3
