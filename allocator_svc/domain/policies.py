"""Which reclaim policy a deployment runs: ``allocator.reclaim_policy`` names one.

- ``adaptive`` (default, ``domain.adaptive``): ranks voices by their expected request
  rate from the history kept in the database, and lets a request wait (bounded by
  ``reclaim_max_wait_s``) rather than evict a voice mid-session.
- ``lru`` (``domain.reclaim.LeastRecentlyUsed``): evicts the least recently used voice,
  never waits; predictable, and what to pick when the history is no guide (every voice
  equally likely next, or traffic replayed in strict recency order).

Both keep the same hard rules (``reclaim``): the residency, the add/edit reserve, never a
leased or pinned voice.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from allocator_svc.domain.adaptive import Adaptive
from allocator_svc.domain.reclaim import LeastRecentlyUsed, ReclaimPolicy

PolicyName = Literal["adaptive", "lru"]
POLICY_NAMES: tuple[PolicyName, ...] = ("adaptive", "lru")
DEFAULT_RESIDENCY = timedelta(seconds=10)


def reclaim_policy(
    name: str,
    *,
    idle_reclaim_after_s: float = 900.0,
    add_edit_reserve: int = 0,
    max_wait_s: float = 30.0,
) -> ReclaimPolicy:
    """The policy called ``name``. A voice is never evicted sooner after it became ready
    than the shorter of 10 s and the idle threshold: a deployment that calls a voice idle
    after 1 s has said it wants slots to turn over that fast, and the residency exists
    only to let the requester come back for its lease before anyone may evict it."""
    residency = min(DEFAULT_RESIDENCY, timedelta(seconds=idle_reclaim_after_s))
    if name == "adaptive":
        return Adaptive(
            min_residency=residency, add_edit_reserve=add_edit_reserve, max_wait_s=max_wait_s
        )
    if name == "lru":
        return LeastRecentlyUsed(min_residency=residency, add_edit_reserve=add_edit_reserve)
    raise ValueError(f"reclaim_policy: unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}")
