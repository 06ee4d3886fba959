"""Exponential backoff with jitter, for handler retries and the operator-wide loops.

A fixed delay hammers an allocator that is down with every VoiceSlot at once and in
lockstep; doubling spreads the load out and full jitter (a random share of the
doubled delay, never below half of it) keeps many retries from synchronising.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    attempt: int,
    *,
    base_s: float,
    cap_s: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """The delay before try number ``attempt + 1`` (``attempt`` 0: the first retry):
    between half and all of ``min(cap_s, base_s * 2**attempt)``."""
    ceiling = min(cap_s, base_s * 2 ** min(max(attempt, 0), 62))
    return ceiling / 2 + rand() * ceiling / 2
