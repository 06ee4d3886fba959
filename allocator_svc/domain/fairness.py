"""Which users can have a request among the next places of the fair order, from each
user's counts alone.

The fair order (``allocator_svc.repository.queue``) keys a user's requests by the slots
the user would hold once each is served: ``held + 1`` for their first due request,
``held + 2`` for the second, and so on; smaller keys go first, ties are broken by the
request's rank, the user's turn and the request's age. Ranking every due request to
find the next ``n`` grew with the whole queue. The keys themselves need only two numbers
per user (slots held, requests due), so the key of the ``n``-th place (the cut-off) can
be found from those counts, and only requests with a key up to it need ranking: those of
users holding fewer slots than the cut-off, and of each only the first ``cutoff - held``.
Every other request's key is larger, so it comes later.

Pure: plain values in, plain values out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Standing:
    owner: str
    held: int
    """Slots the user's voices hold at the provider now."""
    due: int
    """The user's requests at the provider that are queued and due."""


def keys_below(standings: Sequence[Standing], key: int) -> int:
    """How many due requests have a key smaller than ``key``: each user's requests have
    the keys ``held + 1 .. held + due``."""
    return sum(min(s.due, max(0, key - 1 - s.held)) for s in standings)


def cutoff_key(standings: Sequence[Standing], n: int) -> int:
    """The key of the ``n``-th place (or of the last place when fewer than ``n``
    requests are due); 0 when none is due.

    Between the keys where some user's requests begin or end, the number of users with a
    request at each key is constant, so the places fill linearly there: one step per
    such key, O(users log users) whatever the slots held or the queue's length."""
    waiting = [s for s in standings if s.due > 0]
    if not waiting or n <= 0:
        return 0
    change: Counter[int] = Counter()
    for s in waiting:
        change[s.held + 1] += 1  # a user's first key
        change[s.held + s.due + 1] -= 1  # the key after their last
    keys = sorted(change)
    active = placed = 0
    for key, following in zip(keys, keys[1:], strict=False):
        active += change[key]
        if active and placed + active * (following - key) >= n:
            return key + -(-(n - placed) // active) - 1  # ceil: the key holding place n
        placed += active * (following - key)
    return keys[-1] - 1  # fewer than n due: the last key of all
