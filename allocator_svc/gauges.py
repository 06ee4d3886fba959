"""The allocator's state gauges, kept current by the allocator itself.

Backlog, oldest wait, slots, breaker, stuck allocations and the add/edit budget live in
the database; alerts need them whether or not anyone asks. A background loop reads them
every ``gauge_interval_s`` with the same aggregate queries ListProviders uses (two small
GROUP BYs, a read of the provider rows, and the stuck-allocation lookup, which matches
nothing in a healthy system). The lease path never touches them: it is the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterable
from datetime import datetime

from allocator_svc.domain.breaker import BreakerState
from allocator_svc.records import ProviderStats
from allocator_svc.repository import AllocatorRepository
from voiceslot import telemetry
from voiceslot.clock import Clock
from voiceslot.logs import get_logger

log = get_logger(__name__)


def publish(
    stats: Iterable[ProviderStats], now: datetime, stuck: dict[str, int] | None = None
) -> None:
    """Set every state gauge from one reading of the providers (``stuck``: stuck
    allocations per provider, when they were counted)."""
    for st in stats:
        name = st.name
        telemetry.QUEUE_DEPTH.labels(name).set(st.queued)
        age = (now - st.oldest_queued_at).total_seconds() if st.oldest_queued_at else 0.0
        telemetry.QUEUE_OLDEST_AGE.labels(name).set(max(0.0, age))
        telemetry.SLOTS_USED.labels(name).set(st.used)
        telemetry.SLOTS_CAPACITY.labels(name).set(st.capacity)
        telemetry.BREAKER_OPEN.labels(name).set(
            1 if st.breaker_state == BreakerState.OPEN.value else 0
        )
        if st.add_edit_remaining is None:
            # Unknown is not zero: an alert on "budget < N" must not fire for it.
            with contextlib.suppress(KeyError):  # never set: nothing to remove
                telemetry.ADD_EDIT_REMAINING.remove(name)
        else:
            telemetry.ADD_EDIT_REMAINING.labels(name).set(st.add_edit_remaining)
        if stuck is not None:
            telemetry.STUCK_ALLOCATIONS.labels(name).set(stuck.get(name, 0))
    telemetry.GAUGES_REFRESHED.set(now.timestamp())


async def refresh(repo: AllocatorRepository, clock: Clock) -> None:
    now = clock.now()
    stats = await repo.provider_stats(now)
    stuck = Counter(claim.provider for claim in await repo.stuck_allocations(now))
    publish(stats, now, dict(stuck))


async def run(repo: AllocatorRepository, clock: Clock, interval_s: float) -> None:
    """Refresh now, then every ``interval_s``, until cancelled."""
    while True:
        try:
            with telemetry.span("allocator.refresh_gauges"):
                await refresh(repo, clock)
        except Exception as exc:  # the database may be briefly unreachable: keep going
            log.warning("gauge refresh failed", error=repr(exc))
        await asyncio.sleep(interval_s)
