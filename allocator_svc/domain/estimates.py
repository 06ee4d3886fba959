"""What a waiting caller is told: how long until its voice is ready.

Clone durations are measured per provider and kept as an exponentially weighted mean on
the provider's row (recent clones count most: providers speed up and slow down). The
functions are plain arithmetic, so the repository can apply ``ewma`` to SQL column
expressions in one atomic UPDATE as well as to numbers.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")

CLONE_SECONDS_WEIGHT = 0.2
"""Weight of the newest clone in the mean: about the last ten clones matter."""


def ewma(previous: T, sample: T, weight: float = CLONE_SECONDS_WEIGHT) -> T:
    """The mean after ``sample`` (numbers, or SQL expressions alike)."""
    return previous + weight * (sample - previous)  # type: ignore[operator, return-value]


def estimate_wait_s(position: int, capacity: int, mean_allocation_s: float) -> float:
    """Rough wait for the ``position``-th request in line: slots turn over in waves of
    ``capacity`` allocations, each taking about ``mean_allocation_s``."""
    waves = (position + max(1, capacity) - 1) // max(1, capacity)
    return waves * mean_allocation_s


def remaining_s(mean_allocation_s: float, elapsed_s: float) -> float:
    """What is left of an allocation in flight for ``elapsed_s``, at least nothing."""
    return max(0.0, mean_allocation_s - elapsed_s)
