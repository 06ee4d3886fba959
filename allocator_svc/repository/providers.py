"""Provider accounts: configuration, usage statistics, and the health state replicas
share through the provider row (circuit breaker, token bucket, remaining add/edit budget).

Deciding is done by the pure policies in ``allocator_svc.domain``; this module only reads
and writes the row they decide on.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from allocator_svc.domain.breaker import Breaker, BreakerPolicy, BreakerState, ProviderOutcome
from allocator_svc.models import AllocationRequestRow, ProviderRow, VoiceRow
from allocator_svc.records import ProviderStats
from allocator_svc.repository._base import HOLDING, RepositoryBase
from voiceslot.token_bucket import Bucket, TokenBucket


def breaker_of(prov: ProviderRow) -> Breaker:
    return Breaker(BreakerState(prov.breaker_state), prov.breaker_failures, prov.breaker_open_until)


def store_breaker(prov: ProviderRow, b: Breaker) -> None:
    prov.breaker_state = b.state.value
    prov.breaker_failures = b.failures
    prov.breaker_open_until = b.open_until


class ProvidersRepository(RepositoryBase):
    async def upsert_providers(
        self, providers: Sequence[tuple[str, str, int]], now: datetime
    ) -> None:
        """Make the provider rows match configuration (name, kind, capacity).

        One ``INSERT … ON CONFLICT DO UPDATE`` per provider: replicas starting together
        must not race on a read-then-insert (the loser would fail its start on the
        primary key). Breaker and bucket state are kept across restarts.
        """
        insert_ = pg_insert if self._postgres else sqlite_insert
        async with self._sessions.begin() as s:
            for name, kind, capacity in providers:
                stmt = insert_(ProviderRow).values(
                    name=name,
                    kind=kind,
                    capacity=capacity,
                    updated_at=now,
                    breaker_state=BreakerState.CLOSED.value,
                    breaker_failures=0,
                    tokens=0.0,
                )
                await s.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[ProviderRow.name],
                        set_={"kind": kind, "capacity": capacity, "updated_at": now},
                    )
                )

    async def set_add_edit_remaining(self, name: str, remaining: int | None, now: datetime) -> None:
        async with self._sessions.begin() as s:
            await s.execute(
                update(ProviderRow)
                .where(ProviderRow.name == name)
                .values(add_edit_remaining=remaining, updated_at=now)
            )

    async def provider_stats(self, now: datetime, *, name: str = "") -> list[ProviderStats]:
        async with self._sessions() as s:
            q = select(ProviderRow).order_by(ProviderRow.name)
            if name:
                q = q.where(ProviderRow.name == name)
            providers = (await s.execute(q)).scalars().all()
            used = dict(
                (
                    await s.execute(
                        select(VoiceRow.provider, func.count())
                        .where(VoiceRow.state.in_(HOLDING))
                        .group_by(VoiceRow.provider)
                    )
                ).all()
            )
            queued = {
                p: (n, oldest)
                for p, n, oldest in (
                    await s.execute(
                        select(
                            AllocationRequestRow.provider,
                            func.count(),
                            func.min(AllocationRequestRow.created_at),
                        )
                        .where(AllocationRequestRow.state == "queued")
                        .group_by(AllocationRequestRow.provider)
                    )
                ).all()
            }
        stats = []
        for p in providers:
            n, oldest = queued.get(p.name, (0, None))
            if oldest is not None and oldest.tzinfo is None:
                # Aggregates bypass the column type on SQLite.
                oldest = datetime.fromisoformat(str(oldest)).replace(tzinfo=now.tzinfo)
            stats.append(
                ProviderStats(
                    name=p.name,
                    kind=p.kind,
                    capacity=p.capacity,
                    used=int(used.get(p.name, 0)),
                    queued=int(n),
                    oldest_queued_at=oldest,
                    breaker_state=p.breaker_state,
                    add_edit_remaining=p.add_edit_remaining,
                )
            )
        return stats

    async def record_provider_outcome(
        self,
        provider: str,
        outcome: ProviderOutcome,
        now: datetime,
        *,
        retry_after: float | None = None,
        breaker: BreakerPolicy | None = None,
        bucket: TokenBucket | None = None,
    ) -> Breaker | None:
        """Apply a provider call's outcome to the breaker and bucket on the provider's row
        (a 429 pauses the bucket for ``retry_after``). Returns the breaker after it, or
        None for an unknown provider.

        Most outcomes are successes of a closed breaker, which change nothing: they cost
        one unlocked read, not a write on the row every dispatcher locks.
        """
        breaker = breaker or BreakerPolicy()
        bucket = bucket or TokenBucket()
        throttled = outcome == ProviderOutcome.THROTTLED
        cols = (
            ProviderRow.breaker_state,
            ProviderRow.breaker_failures,
            ProviderRow.breaker_open_until,
        )
        query = select(*cols).where(ProviderRow.name == provider)
        if self._hot is not None:  # one round trip, no pre-ping, no transaction
            async with self._hot.connect() as conn:
                seen = (await conn.execute(query)).first()
        else:
            async with self._sessions() as s:
                seen = (await s.execute(query)).first()
        if seen is None:
            return None
        before = Breaker(BreakerState(seen[0]), seen[1], seen[2])
        if not throttled and breaker.record(before, outcome, now) == before:
            return before
        async with self._sessions.begin() as s:
            prov = await s.get(ProviderRow, provider, with_for_update=True)
            if prov is None:
                return None
            after = breaker.record(breaker_of(prov), outcome, now)
            store_breaker(prov, after)
            if throttled:
                paused = bucket.pause(
                    Bucket(prov.tokens, prov.tokens_at),
                    1.0 if retry_after is None else retry_after,
                    now,
                )
                prov.tokens, prov.tokens_at = paused.tokens, paused.at
            prov.updated_at = now
            return after

    async def provider_health(self, provider: str) -> tuple[Breaker, Bucket] | None:
        """The breaker and bucket as stored (for admin views and tests)."""
        async with self._sessions() as s:
            prov = await s.get(ProviderRow, provider)
            if prov is None:
                return None
            return breaker_of(prov), Bucket(prov.tokens, prov.tokens_at)
