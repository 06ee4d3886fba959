"""Batch job rules: item outcomes, job state and progress, retry timing. Pure.

Progress is (succeeded + failed) / total: exact, monotonic (counters only grow, in the
same transaction as the item that grew them) and never above 1. Cancelled items do not
count as processed, so a cancelled job's progress stays where it stopped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum


class JobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class ItemState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED_JOB_STATES = frozenset({JobState.COMPLETED, JobState.CANCELLED})


@dataclass(frozen=True)
class Counts:
    total: int
    succeeded: int
    failed: int

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed

    @property
    def progress(self) -> float:
        return min(1.0, self.processed / self.total) if self.total else 0.0


def job_state_after(current: JobState, counts: Counts) -> JobState:
    """The job's state once an item has finished."""
    if current in FINISHED_JOB_STATES:
        return current
    return JobState.COMPLETED if counts.processed >= counts.total else JobState.RUNNING


def retry_delay_s(
    attempts: int,
    *,
    rng: random.Random,
    base_s: float = 1.0,
    max_s: float = 60.0,
    retry_after: float | None = None,
) -> float:
    """Exponential backoff with full jitter; a provider's Retry-After is a floor."""
    ceiling = min(max_s, base_s * 2 ** max(0, attempts - 1))
    return max(rng.uniform(0, ceiling), retry_after or 0.0)


def should_retry(attempts: int, *, max_attempts: int, transient: bool) -> bool:
    return transient and attempts < max_attempts
