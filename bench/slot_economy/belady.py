"""Belady's offline optimum, the yardstick every policy is measured against.

On a miss with no free slot, evict the evictable resident voice whose next request is
farthest in the future (never again counts as infinitely far). For a cache this is the
minimum number of misses (MIN). Here a voice under an active lease cannot be evicted, so
when every resident is leased the request waits for the first lease to end, as it does
under every policy; Belady never chooses to wait. With leases the figure is the
farthest-next-use rule on the same constraints, not a proven minimum: a policy that waits
on purpose can, in overload, come in under it (a multiple below 1.0).

"Next request" is by arrival order in the trace, which waiting does not change.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from .policies import AdmitContext, _Base
from .traces import Request

NEVER = float("inf")


def next_use(requests: Sequence[Request]) -> list[float]:
    """For each request, the index of the next request for the same voice (inf: none)."""
    nxt: list[float] = [NEVER] * len(requests)
    seen: dict[int, int] = {}
    for i in range(len(requests) - 1, -1, -1):
        v = requests[i].voice
        nxt[i] = seen.get(v, NEVER)
        seen[v] = i
    return nxt


class Belady(_Base):
    name = "Belady"

    def __init__(self, slots: int, requests: Sequence[Request]) -> None:
        self.nxt = next_use(requests)
        self.next_of: dict[int, float] = {}  # voice -> index of its next request
        # Max-heap of (-next index, voice) for residents, with stale entries skipped.
        self.heap: list[tuple[float, int]] = []
        self.resident: set[int] = set()

    def observe(self, index: int, request: Request) -> None:
        self.next_of[request.voice] = self.nxt[index]
        if request.voice in self.resident:
            heapq.heappush(self.heap, (-self.nxt[index], request.voice))

    def hit(self, voice: int, now: float) -> None:
        pass

    def admit(self, voice: int, ctx: AdmitContext) -> int | None:
        victim = None
        if ctx.free_slots == 0:
            skipped: list[tuple[float, int]] = []
            while self.heap:
                neg, v = heapq.heappop(self.heap)
                if v not in self.resident or -neg != self.next_of[v]:
                    continue  # stale
                if ctx.evictable(v):
                    victim = v
                    break
                skipped.append((neg, v))  # leased now, still a candidate later
            for item in skipped:
                heapq.heappush(self.heap, item)
            assert victim is not None, "the engine asks only when a voice is evictable"
            self.resident.discard(victim)
        self.resident.add(voice)
        heapq.heappush(self.heap, (-self.next_of[voice], voice))
        return victim
