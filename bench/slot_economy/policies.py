"""The replay seam and the five reference cache policies.

The replay engine (``replay.py``) drives every policy through ``ReplayPolicy``:

- ``observe(index, request)``: every request as it arrives, served or not (offline
  policies such as Belady read the future from here; the product's default updates
  its statistics as the allocator's database would).
- ``hit(voice, now)``: a request found its voice resident (or a queued request was served
  by a clone made for an earlier one).
- ``admit(voice, ctx)``: the voice must be cloned into a slot. With a free slot the policy
  returns ``None``; otherwise it names a resident victim for which ``ctx.evictable`` is
  true, or — only if it ``may_wait`` — returns ``Wait`` and the request stays queued.
  A policy changes its state only when it admits (a ``Wait`` leaves it untouched, since
  the engine asks again).

The engine never asks for a victim when nothing is evictable (every resident leased or
pinned): then the request waits for the first lease to end, whatever the policy.

Reference policies, from their papers, adapted only where a slot differs from a cache
line: a voice under a lease cannot be evicted, so where a policy's chosen victim is
leased it takes the next one its own order would take.

- LRU: evict the least recently used.
- ARC (Megiddo & Modha, FAST'03): recency list T1 and frequency list T2 with ghost lists
  B1/B2 steering the target size p of T1.
- SIEVE (Zhang et al., NSDI'24): one FIFO with visited bits and a hand that moves from
  the oldest entry towards the newest, clearing bits, evicting the first unvisited one;
  hits never move entries.
- S3-FIFO (Yang et al., SOSP'23): a small FIFO (10 %) for new voices, a main FIFO (90 %)
  with a 2-bit frequency, a ghost FIFO of evicted small-queue ids as long as main;
  a voice leaves small for main if it was hit at least once there (libCacheSim's
  move-to-main threshold 1), main reinserts voices with frequency > 0, decrementing it.
- W-TinyLFU (Einziger, Friedman & Manes, TOS'17; Caffeine): 1 % LRU window, 99 % SLRU
  main (80 % protected), and TinyLFU admission: the window's victim enters main only if
  it was seen more often than main's victim. Frequencies here are exact counters with
  TinyLFU's aging (halve everything every 10 x slots samples, 4-bit cap) instead of a
  count-min sketch: the sketch only approximates these counts, so this is TinyLFU at
  its most accurate.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from .traces import Request


@dataclass(frozen=True, slots=True)
class Wait:
    """Leave the request queued; ask again at ``until`` (trace time) at the latest, or at
    the next arrival or lease end, whichever comes first."""

    until: float | None = None


@dataclass(frozen=True)
class AdmitContext:
    now: float
    free_slots: int
    evictable: Callable[[int], bool]
    """True for a resident voice that is neither leased nor pinned."""
    residents: frozenset[int] | set[int]
    lease_until: dict[int, float]
    waiting_since: float
    """Arrival of the oldest queued request for this voice (``now`` if it just came)."""
    backlog: int
    """Voices waiting for a slot, this one included."""


class ReplayPolicy(Protocol):
    name: str
    may_wait: bool

    def observe(self, index: int, request: Request) -> None: ...

    def hit(self, voice: int, now: float) -> None: ...

    def admit(self, voice: int, ctx: AdmitContext) -> int | None | Wait: ...


def first_evictable(order: Iterable[int], ctx: AdmitContext) -> int | None:
    for v in order:
        if ctx.evictable(v):
            return v
    return None


class _Base:
    name = "base"
    may_wait = False

    def observe(self, index: int, request: Request) -> None:
        pass


class LRU(_Base):
    name = "LRU"

    def __init__(self, slots: int) -> None:
        self.order: OrderedDict[int, None] = OrderedDict()  # oldest first

    def hit(self, voice: int, now: float) -> None:
        self.order.move_to_end(voice)

    def admit(self, voice: int, ctx: AdmitContext) -> int | None:
        victim = None
        if ctx.free_slots == 0:
            victim = first_evictable(self.order, ctx)
            del self.order[victim]
        self.order[voice] = None
        return victim


class ARC(_Base):
    name = "ARC"

    def __init__(self, slots: int) -> None:
        self.c = slots
        self.p = 0.0
        # OrderedDicts, LRU end first.
        self.t1: OrderedDict[int, None] = OrderedDict()
        self.t2: OrderedDict[int, None] = OrderedDict()
        self.b1: OrderedDict[int, None] = OrderedDict()
        self.b2: OrderedDict[int, None] = OrderedDict()

    def hit(self, voice: int, now: float) -> None:
        self.t1.pop(voice, None)
        self.t2.pop(voice, None)
        self.t2[voice] = None

    def _replace(self, in_b2: bool, ctx: AdmitContext) -> int:
        """ARC's REPLACE: from T1 if it is over its target p (or at it on a B2 hit),
        else from T2; a leased voice is skipped for the next in the same list, and the
        other list is used when one has nothing evictable."""
        from_t1 = len(self.t1) >= 1 and (
            len(self.t1) > self.p or (in_b2 and len(self.t1) == self.p)
        )
        lists = [(self.t1, self.b1), (self.t2, self.b2)]
        if not from_t1:
            lists.reverse()
        for t, b in lists:
            victim = first_evictable(t, ctx)
            if victim is not None:
                del t[victim]
                b[victim] = None
                return victim
        raise AssertionError("the engine asks only when a voice is evictable")

    def admit(self, voice: int, ctx: AdmitContext) -> int | None:
        full = ctx.free_slots == 0
        victim = None
        if voice in self.b1:  # case II: recency was undervalued, grow T1's target
            self.p = min(self.c, self.p + max(len(self.b2) / len(self.b1), 1.0))
            if full:
                victim = self._replace(False, ctx)
            del self.b1[voice]
            self.t2[voice] = None
            return victim
        if voice in self.b2:  # case III: frequency was undervalued, shrink T1's target
            self.p = max(0.0, self.p - max(len(self.b1) / len(self.b2), 1.0))
            if full:
                victim = self._replace(True, ctx)
            del self.b2[voice]
            self.t2[voice] = None
            return victim
        # case IV: a voice in no list
        l1 = len(self.t1) + len(self.b1)
        total = l1 + len(self.t2) + len(self.b2)
        if l1 >= self.c:
            if len(self.t1) < self.c:
                self.b1.popitem(last=False)
                if full:
                    victim = self._replace(False, ctx)
            elif full:  # T1 is the whole cache: drop its LRU outright (no ghost)
                victim = first_evictable(self.t1, ctx)
                del self.t1[victim]
        elif total >= self.c:
            if total >= 2 * self.c and self.b2:
                self.b2.popitem(last=False)
            if full:
                victim = self._replace(False, ctx)
        self.t1[voice] = None
        return victim


class SIEVE(_Base):
    name = "SIEVE"

    def __init__(self, slots: int) -> None:
        self.queue: list[int] = []  # index 0 = oldest (tail), end = newest (head)
        self.visited: dict[int, bool] = {}
        self.hand = 0

    def hit(self, voice: int, now: float) -> None:
        self.visited[voice] = True

    def admit(self, voice: int, ctx: AdmitContext) -> int | None:
        victim = None
        if ctx.free_slots == 0:
            # Two passes clear every bit, so the third finds an unvisited evictable voice.
            for _ in range(3 * len(self.queue) + 1):
                if self.hand >= len(self.queue):
                    self.hand = 0
                v = self.queue[self.hand]
                if self.visited[v]:
                    self.visited[v] = False
                    self.hand += 1
                elif not ctx.evictable(v):
                    self.hand += 1  # leased: the hand passes it by
                else:
                    victim = v
                    del self.queue[self.hand]  # hand now points at the next newer voice
                    del self.visited[v]
                    break
            else:
                raise AssertionError("the engine asks only when a voice is evictable")
        self.queue.append(voice)
        self.visited[voice] = False
        return victim


class S3FIFO(_Base):
    name = "S3-FIFO"

    def __init__(self, slots: int, small_ratio: float = 0.1) -> None:
        self.small_target = max(1, round(small_ratio * slots))
        self.ghost_size = max(1, slots - self.small_target)
        self.small: OrderedDict[int, None] = OrderedDict()  # oldest first
        self.main: OrderedDict[int, None] = OrderedDict()
        self.ghost: OrderedDict[int, None] = OrderedDict()
        self.freq: dict[int, int] = {}

    def hit(self, voice: int, now: float) -> None:
        self.freq[voice] = min(self.freq[voice] + 1, 3)

    def _evict_main(self, ctx: AdmitContext) -> int | None:
        for _ in range(4 * len(self.main) + 1):
            if not self.main:
                return None
            v, _none = self.main.popitem(last=False)
            if self.freq[v] > 0 or not ctx.evictable(v):
                self.freq[v] = max(0, self.freq[v] - 1)
                self.main[v] = None  # reinserted at the head
            else:
                del self.freq[v]
                return v
        return None

    def _evict_small(self, ctx: AdmitContext) -> int | None:
        for _ in range(len(self.small)):
            v, _none = self.small.popitem(last=False)
            if self.freq[v] >= 1:
                self.freq[v] = 0
                self.main[v] = None  # promoted; the cache size is unchanged
            elif not ctx.evictable(v):
                self.small[v] = None  # leased: back to the head of small
            else:
                del self.freq[v]
                self.ghost[v] = None
                if len(self.ghost) > self.ghost_size:
                    self.ghost.popitem(last=False)
                return v
        return None

    def admit(self, voice: int, ctx: AdmitContext) -> int | None:
        # Whether the voice is a ghost is decided before evicting, which may push it out.
        was_ghost = self.ghost.pop(voice, False) is None
        victim = None
        if ctx.free_slots == 0:
            if len(self.small) >= self.small_target:
                victim = self._evict_small(ctx)
            if victim is None:
                victim = self._evict_main(ctx)
            if victim is None:
                victim = self._evict_small(ctx)
            assert victim is not None, "the engine asks only when a voice is evictable"
        if was_ghost:
            self.main[voice] = None
        else:
            self.small[voice] = None
        self.freq[voice] = 0
        return victim


class WTinyLFU(_Base):
    name = "W-TinyLFU"

    def __init__(
        self, slots: int, window_ratio: float = 0.01, protected_ratio: float = 0.8
    ) -> None:
        self.window_cap = max(1, round(window_ratio * slots))
        self.protected_cap = max(1, int(protected_ratio * (slots - self.window_cap)))
        self.window: OrderedDict[int, None] = OrderedDict()  # LRU first
        self.probation: OrderedDict[int, None] = OrderedDict()
        self.protected: OrderedDict[int, None] = OrderedDict()
        self.counts: dict[int, int] = {}
        self.samples = 0
        self.sample_size = 10 * slots

    def _record(self, voice: int) -> None:
        self.counts[voice] = min(self.counts.get(voice, 0) + 1, 15)
        self.samples += 1
        if self.samples >= self.sample_size:  # TinyLFU's reset: halve, forget the zeros
            self.counts = {v: c // 2 for v, c in self.counts.items() if c // 2}
            self.samples //= 2

    def hit(self, voice: int, now: float) -> None:
        self._record(voice)
        if voice in self.window:
            self.window.move_to_end(voice)
        elif voice in self.probation:
            del self.probation[voice]
            self.protected[voice] = None
            if len(self.protected) > self.protected_cap:
                demoted, _none = self.protected.popitem(last=False)
                self.probation[demoted] = None
        else:
            self.protected.move_to_end(voice)

    def _main_victim(self, ctx: AdmitContext) -> int | None:
        v = first_evictable(self.probation, ctx)
        return v if v is not None else first_evictable(self.protected, ctx)

    def _drop(self, voice: int) -> None:
        for q in (self.window, self.probation, self.protected):
            q.pop(voice, None)

    def admit(self, voice: int, ctx: AdmitContext) -> int | None:
        self._record(voice)
        victim = None
        if ctx.free_slots == 0:
            candidate = (
                first_evictable(self.window, ctx) if len(self.window) >= self.window_cap else None
            )
            main_victim = self._main_victim(ctx)
            if candidate is None:
                victim = (
                    main_victim if main_victim is not None else first_evictable(self.window, ctx)
                )
            elif main_victim is None or self.counts.get(candidate, 0) <= self.counts.get(
                main_victim, 0
            ):
                victim = candidate  # TinyLFU rejects the window's victim
            else:
                victim = main_victim  # admitted: the window's victim moves to probation
                del self.window[candidate]
                self.probation[candidate] = None
            assert victim is not None, "the engine asks only when a voice is evictable"
            self._drop(victim)
        elif len(self.window) >= self.window_cap and self.window:
            # Filling up: the window overflows into main without a duel.
            moved, _none = self.window.popitem(last=False)
            self.probation[moved] = None
        self.window[voice] = None
        return victim


REFERENCE_POLICIES: dict[str, Callable[[int], ReplayPolicy]] = {
    "LRU": LRU,
    "ARC": ARC,
    "SIEVE": SIEVE,
    "S3-FIFO": S3FIFO,
    "W-TinyLFU": WTinyLFU,
}
