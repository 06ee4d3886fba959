"""The replay engine: one trace, one policy, slots as the only resource.

Semantics (the allocator's, in trace time):

- A request whose voice is resident is served at once (a hit) and leases the voice until
  ``now + lease``; leases of the same voice overlap, the latest end counts.
- Otherwise the voice must be cloned: one clone, whatever happens next. With a free slot it
  is cloned at once (clone latency is not modelled: it is the same for every policy).
- With no free slot the policy names a victim among the evictable residents (not leased,
  not pinned), or — if it may — says ``Wait``. If no resident is evictable the request
  waits whatever the policy. Waiting requests queue first-come first-served per voice:
  later requests for a voice already queued join it and are served by the same clone.
  The queue is retried at every arrival, every lease end and the time a ``Wait`` named.
- A request's wait is the trace time from its arrival to being served (0 for most).

Clones are counted per policy; Belady's count on the same trace and slots is the yardstick.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .policies import AdmitContext, ReplayPolicy, Wait
from .traces import Trace

INF = float("inf")


@dataclass(frozen=True)
class ReplayResult:
    policy: str
    clones: int
    requests: int
    waited: int
    """Requests that waited any time at all."""
    wait_p50: float
    wait_p95: float
    wait_max: float

    @property
    def per_1000(self) -> float:
        return 1000.0 * self.clones / max(1, self.requests)


class _State:
    """Residents, leases and the queue: the allocator's tables, in memory."""

    def __init__(self, slots: int, pinned: frozenset[int]) -> None:
        self.slots = slots
        self.pinned = pinned
        self.resident: set[int] = set()
        self.lease_until: dict[int, float] = {}
        self.queue: OrderedDict[int, list[int]] = OrderedDict()  # voice -> request indices
        self.now = 0.0

    def evictable(self, voice: int) -> bool:
        return voice not in self.pinned and self.lease_until.get(voice, -INF) <= self.now

    def next_lease_end(self) -> float:
        ends = [e for v in self.resident if (e := self.lease_until.get(v, -INF)) > self.now]
        return min(ends, default=INF)


def replay(
    trace: Trace,
    policy: ReplayPolicy,
    *,
    pinned: frozenset[int] = frozenset(),
    progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    reqs = trace.requests
    st = _State(trace.slots, pinned)
    served_at = np.full(len(reqs), np.nan)
    clones = 0
    wake = INF  # when a waiting queue should be retried without an arrival

    def serve(voice: int, indices: list[int], *, admitted: bool) -> None:
        for k, i in enumerate(indices):
            if k > 0 or not admitted:
                policy.hit(voice, st.now)
            served_at[i] = st.now
            end = st.now + reqs[i].lease
            if end > st.lease_until.get(voice, -INF):
                st.lease_until[voice] = end

    def drain() -> float:
        """Serve the queue head-first until it is empty or must wait; the next retry time."""
        nonlocal clones
        while st.queue:
            voice, indices = next(iter(st.queue.items()))
            if voice in st.resident:
                del st.queue[voice]
                serve(voice, indices, admitted=False)
                continue
            free = st.slots - len(st.resident)
            until: float | None = None
            if free == 0 and not any(st.evictable(v) for v in st.resident):
                return st.next_lease_end()
            ctx = AdmitContext(
                now=st.now,
                free_slots=free,
                evictable=st.evictable,
                residents=st.resident,
                lease_until=st.lease_until,
                waiting_since=reqs[indices[0]].t,
                backlog=len(st.queue),
            )
            decision = policy.admit(voice, ctx)
            if isinstance(decision, Wait):
                if not policy.may_wait:
                    raise RuntimeError(f"{policy.name} waited but does not declare may_wait")
                until = decision.until
                return min(
                    until if until is not None and until > st.now else INF, st.next_lease_end()
                )
            if decision is not None:
                if free > 0:
                    raise RuntimeError(f"{policy.name} evicted {decision} with a free slot")
                if decision not in st.resident or not st.evictable(decision):
                    raise RuntimeError(
                        f"{policy.name} evicted {decision}, which is not an evictable resident"
                    )
                st.resident.discard(decision)
                st.lease_until.pop(decision, None)
            elif free == 0:
                raise RuntimeError(f"{policy.name} admitted without a victim on a full provider")
            clones += 1
            st.resident.add(voice)
            del st.queue[voice]
            serve(voice, indices, admitted=True)
        return INF

    for i, r in enumerate(reqs):
        # Retry the queue at the wake-ups that fall before this arrival.
        while st.queue and wake <= r.t:
            st.now = max(st.now, wake)
            wake = drain()
        st.now = max(st.now, r.t)
        policy.observe(i, r)
        if r.voice in st.queue:
            st.queue[r.voice].append(i)
        elif r.voice in st.resident:
            serve(r.voice, [i], admitted=False)
        else:
            st.queue[r.voice] = [i]
        if st.queue:
            wake = drain()
        if progress is not None and i % 1000 == 999:
            progress(1000)
    while st.queue:
        if wake == INF:
            raise RuntimeError(f"{policy.name}: requests left waiting forever (every slot pinned?)")
        st.now = max(st.now, wake)
        wake = drain()
    if progress is not None:
        progress(len(reqs) % 1000)

    waits = served_at - np.array([r.t for r in reqs])
    return ReplayResult(
        policy=policy.name,
        clones=clones,
        requests=len(reqs),
        waited=int((waits > 1e-9).sum()),
        wait_p50=float(np.percentile(waits, 50)),
        wait_p95=float(np.percentile(waits, 95)),
        wait_max=float(waits.max(initial=0.0)),
    )
