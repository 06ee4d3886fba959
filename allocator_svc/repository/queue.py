"""The durable allocation queue, seen from the caller: EnsureActiveVoice's slow path,
enqueue with per-user caps, the fair order in which the dispatcher serves requests, and
where a request stands in it.

A request is a row: ``queued`` → ``leased`` (claimed, with a token and an expiry) →
``done``, or back to ``queued`` at a later ``run_at``, or ``dead`` (see ``claims``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from allocator_svc.domain.estimates import estimate_wait_s, remaining_s
from allocator_svc.domain.states import EventReason, VoiceState, needs_allocation
from allocator_svc.models import (
    AllocationRequestRow,
    AllocationTurnRow,
    ProviderRow,
    VoiceRow,
)
from allocator_svc.records import (
    Allocating,
    EnsureOutcome,
    Queued,
)
from allocator_svc.repository._base import HOLDING, S, record, transition
from allocator_svc.repository.leases import EnsureParams, LeasesRepository
from voiceslot.db import advisory_lock_key
from voiceslot.errors import FailedPrecondition, QuotaExceeded, QuotaViolation


def owner_lock_key(owner: str) -> int:
    """The advisory lock key that serializes one user's enqueues (their queued cap)."""
    return advisory_lock_key(f"voiceslot.allocator.owner:{owner}")


class QueueRepository(LeasesRepository):
    async def ensure_active(self, p: EnsureParams, now: datetime) -> EnsureOutcome:
        """Lease a READY voice, or enqueue its allocation, or say where it stands.

        The hot path (a READY voice) is tried first, without locking the row beforehand
        (see ``_lease_hot``). Only when that misses does the slow path lock the row and
        decide.
        """
        ready = await self._lease_hot(p, now)
        if ready is not None:
            return ready
        async with self._sessions.begin() as s:
            row = await self._lock_voice(s, p.voice_id, p.owner)
            state = VoiceState(row.state)
            if state == S.DELETING:
                raise FailedPrecondition(f"voice {row.id} is being deleted")
            if state == S.READY:  # became ready since the first look; we hold the lock now
                ready = await self._lease_ready(await s.connection(), p, now)
                assert ready is not None
                return ready
            if needs_allocation(state):
                await self._check_user_cap(s, row.owner, p.per_user_max_queued)
                await self._enqueue(s, row, p.priority, now)
                state = S.QUEUED
            voice = record(row, 0)
            prov = await s.get(ProviderRow, row.provider)
            # Measured clone durations once there are any; the caller's guess before.
            mean = p.mean_allocation_s
            if prov is not None and prov.clone_seconds is not None:
                mean = prov.clone_seconds
            if state == S.QUEUED:
                position = await self._queue_position(s, row.id, row.provider, now)
                capacity = prov.capacity if prov is not None else 1
                return Queued(voice, position, estimate_wait_s(position, capacity, mean))
            # ALLOCATING, or RECLAIMING (it will be IDLE shortly and re-queued on the next call)
            elapsed = (now - row.state_changed_at).total_seconds()
            return Allocating(voice, remaining_s(mean, elapsed))

    async def _check_user_cap(self, s: AsyncSession, owner: str, cap: int) -> None:
        """RESOURCE_EXHAUSTED (QuotaFailure) when ``owner`` already has ``cap`` requests
        queued or in flight.

        Count-then-insert is only exact if one owner's enqueues are serialized: SQLite's
        ``BEGIN IMMEDIATE`` does that; on PostgreSQL a transaction-scoped advisory lock
        keyed by the owner does (two of one user's voices enqueued at once would
        otherwise both see cap - 1 and both pass).
        """
        if self._postgres:
            await s.execute(select(func.pg_advisory_xact_lock(owner_lock_key(owner))))
        q = select(func.count()).where(
            AllocationRequestRow.owner == owner,
            AllocationRequestRow.state.in_(("queued", "leased")),
        )
        if int((await s.execute(q)).scalar_one()) >= cap:
            raise QuotaExceeded(
                f"user {owner} has {cap} allocations queued or in flight",
                violations=(
                    QuotaViolation(
                        f"user:{owner}", f"at most {cap} queued or in-flight allocations"
                    ),
                ),
            )

    async def _enqueue(self, s: AsyncSession, row: VoiceRow, priority: int, now: datetime) -> None:
        # The key counts the voice's requests (under its row lock, so exactly): asking
        # again for the same allocation (a retry of this call, another replica) hits the
        # unique index. Not the generation: that stays put across attempts (see claims).
        n = (
            await s.execute(select(func.count()).where(AllocationRequestRow.voice_id == row.id))
        ).scalar_one()
        s.add(
            AllocationRequestRow(
                voice_id=row.id,
                owner=row.owner,
                provider=row.provider,
                priority=priority,
                state="queued",
                attempts=0,
                run_at=now,
                idempotency_key=f"{row.id}:q{int(n) + 1}",
                last_error="",
                created_at=now,
                updated_at=now,
            )
        )
        transition(s, row, S.QUEUED, EventReason.ENQUEUED, now)
        await s.flush()

    async def _queue_position(
        self, s: AsyncSession, voice_id: str, provider: str, now: datetime
    ) -> int:
        """Where the voice's request stands in the order the dispatcher serves (1: next).
        A request waiting out a retry delay is placed as the order will be when it is
        due."""
        mine = (
            await s.execute(
                select(AllocationRequestRow.id, AllocationRequestRow.run_at).where(
                    AllocationRequestRow.voice_id == voice_id,
                    AllocationRequestRow.state == "queued",
                )
            )
        ).one_or_none()
        if mine is None:
            return 1
        order = self._fair_queue(provider, max(now, mine.run_at))
        place = (await s.execute(select(order.c.place).where(order.c.id == mine.id))).scalar()
        return int(place or 1)

    @staticmethod
    async def _backlog(s: AsyncSession, provider: str, now: datetime) -> int:
        """Requests at ``provider`` due now and waiting."""
        q = select(func.count()).where(
            AllocationRequestRow.provider == provider,
            AllocationRequestRow.state == "queued",
            AllocationRequestRow.run_at <= now,
        )
        return int((await s.execute(q)).scalar_one())

    async def backlog(self, provider: str, now: datetime) -> int:
        async with self._sessions() as s:
            return await self._backlog(s, provider, now)

    async def _fair_order(self, s: AsyncSession, provider: str, now: datetime, n: int) -> list[int]:
        """The next ``n`` due requests at ``provider``, fairly across users (see
        ``_fair_queue``)."""
        order = self._fair_queue(provider, now)
        q = select(order.c.id).order_by(order.c.place).limit(n)
        return list((await s.execute(q)).scalars().all())

    @staticmethod
    def _fair_queue(provider: str, due_by: datetime) -> Any:
        """The requests at ``provider`` due by ``due_by``, each with its ``place`` in the
        order the dispatcher serves them (1 first): the one definition of that order,
        used to dispatch and to tell callers where they stand.

        Each request is keyed, smallest first, by

        1. how many slots its user would hold here once it is served: slots held now +
           its rank among the user's own due requests (ranked by priority, then age).
           Users holding fewer slots go first, and every user's first request goes
           before anyone's second (water-filling);
        2. its rank: among equal keys, a user not yet served in this batch first;
        3. the user's turn: who was served least recently at this provider (never: first).
           Round robin among equals, so a user whose slots were all just reclaimed does
           not beat users still waiting on the strength of older request ids;
        4. the request's age.

        One user's 500 queued voices therefore cannot delay ten others' one each: the ten
        take the first slots freed.
        """
        r = AllocationRequestRow
        rank = (
            func.row_number()
            .over(partition_by=r.owner, order_by=(r.priority.desc(), r.id))
            .label("rank")
        )
        ranked = (
            select(r.id, r.owner, rank)
            .where(r.provider == provider, r.state == "queued", r.run_at <= due_by)
            .subquery()
        )
        held = (
            select(VoiceRow.owner, func.count().label("held"))
            .where(VoiceRow.provider == provider, VoiceRow.state.in_(HOLDING))
            .group_by(VoiceRow.owner)
            .subquery()
        )
        turn = (
            select(AllocationTurnRow.owner, AllocationTurnRow.last_claimed_at)
            .where(AllocationTurnRow.provider == provider)
            .subquery()
        )
        place = func.row_number().over(
            order_by=(
                func.coalesce(held.c.held, 0) + ranked.c.rank,
                ranked.c.rank,
                turn.c.last_claimed_at.is_not(None),  # never served: false sorts first
                turn.c.last_claimed_at,
                ranked.c.id,
            )
        )
        return (
            select(ranked.c.id, place.label("place"))
            .outerjoin(held, held.c.owner == ranked.c.owner)
            .outerjoin(turn, turn.c.owner == ranked.c.owner)
            .subquery("fair_queue")
        )
