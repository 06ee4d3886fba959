"""The durable allocation queue, seen from the caller: EnsureActiveVoice's slow path,
enqueue with per-user caps, the fair order in which the dispatcher serves requests, and
where a request stands in it.

A request is a row: ``queued`` → ``leased`` (claimed, with a token and an expiry) →
``done``, or back to ``queued`` at a later ``run_at``, or ``dead`` (see ``claims``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, func, literal, select, tuple_, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from allocator_svc.domain.estimates import estimate_wait_s, remaining_s
from allocator_svc.domain.fairness import Standing, cutoff_key
from allocator_svc.domain.states import EventReason, VoiceState, needs_allocation
from allocator_svc.models import (
    AllocationRequestRow,
    AllocationTurnRow,
    ProviderRow,
    QueueStandingRow,
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
        due.

        Counted, not ranked: every request whose key is smaller comes first, counted from
        the users' standings in one aggregate; of the requests with the same key, those
        of users holding more slots rank higher (so they come first), and only the users
        holding as many slots as this one are ranked against it, by turn and age, in the
        one definition of the order (``_fair_queue``)."""
        mine = (
            await s.execute(
                select(
                    AllocationRequestRow.id,
                    AllocationRequestRow.owner,
                    AllocationRequestRow.run_at,
                ).where(
                    AllocationRequestRow.voice_id == voice_id,
                    AllocationRequestRow.state == "queued",
                )
            )
        ).one_or_none()
        if mine is None:
            return 1
        due_by = max(now, mine.run_at)
        q = QueueStandingRow
        held = (
            await s.execute(select(q.held).where(q.provider == provider, q.owner == mine.owner))
        ).scalar()
        if held is None:  # the request left the queue meanwhile
            return 1
        rank = await self._rank_of(s, mine.id, mine.owner, provider, due_by)
        key = held + rank
        st = self._due_standing(provider, due_by)
        below = _keys_below(st.c.held, st.c.due, key)
        counts = (
            await s.execute(
                select(
                    func.coalesce(func.sum(below), 0),
                    # Users holding more slots with a request at this key: a lower rank.
                    func.coalesce(
                        func.sum(
                            case(
                                (
                                    (st.c.held > held)
                                    & (st.c.held < key)
                                    & (st.c.held + st.c.due >= key),
                                    1,
                                ),
                                else_=0,
                            )
                        ),
                        0,
                    ),
                    func.coalesce(func.sum(case((st.c.held == held, below), else_=0)), 0),
                )
            )
        ).one()
        smaller_keys, higher_rank, rivals_below = (int(c) for c in counts)
        order = self._fair_queue(provider, due_by, cutoff=key, held=held)
        place = (await s.execute(select(order.c.place).where(order.c.id == mine.id))).scalar()
        same_rank_ahead = int(place or 1) - 1 - rivals_below
        return smaller_keys + higher_rank + same_rank_ahead + 1

    @staticmethod
    async def _rank_of(
        s: AsyncSession, request_id: int, owner: str, provider: str, due_by: datetime
    ) -> int:
        """The request's rank among its user's due requests (1: the user's first)."""
        r = AllocationRequestRow
        order = (
            select(r.id, _owner_rank(r).label("rank"))
            .where(
                r.owner == owner, r.provider == provider, r.state == "queued", r.run_at <= due_by
            )
            .subquery()
        )
        rank = (await s.execute(select(order.c.rank).where(order.c.id == request_id))).scalar()
        return int(rank or 1)

    @staticmethod
    def _due_standing(provider: str, due_by: datetime) -> Any:
        """(owner, held, due) of every user with requests queued at ``provider``: the
        ``queue_standing`` aggregate less the requests still waiting out a retry delay
        by ``due_by`` (few, read from the end of the dispatch index)."""
        r, q = AllocationRequestRow, QueueStandingRow
        later = (
            select(r.owner, func.count().label("n"))
            .where(r.provider == provider, r.state == "queued", r.run_at > due_by)
            .group_by(r.owner)
            .subquery("later")
        )
        return (
            select(q.owner, q.held, (q.queued - func.coalesce(later.c.n, 0)).label("due"))
            .outerjoin(later, later.c.owner == q.owner)
            .where(q.provider == provider, q.queued > 0)
            .subquery("standing")
        )

    async def _cutoff(self, s: AsyncSession, provider: str, due_by: datetime, n: int) -> int:
        """The key of the ``n``-th place (``domain.fairness.cutoff_key``), reading the
        users in order of slots held only until the rest cannot change it: a user
        holding ``held`` slots has keys above ``held``, so once the users read hold at
        least the cut-off found so far, no later one has a key at or below it (and
        more users only ever lower it)."""
        st = self._due_standing(provider, due_by)
        page = select(st.c.owner, st.c.held, st.c.due).where(st.c.due > 0)
        page = page.order_by(st.c.held, st.c.owner).limit(_STANDING_PAGE)
        read: list[Standing] = []
        while True:
            after = (read[-1].held, read[-1].owner) if read else None
            q = page if after is None else page.where(tuple_(st.c.held, st.c.owner) > after)
            rows = [Standing(o, h, d) for o, h, d in await s.execute(q)]
            read.extend(rows)
            cutoff = cutoff_key(read, n)
            if len(rows) < _STANDING_PAGE or (read and read[-1].held >= cutoff > 0):
                return cutoff

    async def _backlog(self, s: AsyncSession, provider: str, now: datetime) -> int:
        """Requests at ``provider`` due now and waiting.

        First one probe of the dispatch index for any due request: a full account weighs
        its backlog on every round (each ``dispatch_interval_s``, on every replica), and
        while the queue is waiting out retry delays, counting it (the standings less the
        requests not yet due) cost a pass over all of those, 54 ms a round at 50,000."""
        if (await s.execute(_any_due(provider, now))).first() is None:
            return 0
        st = self._due_standing(provider, now)
        return int((await s.execute(select(func.coalesce(func.sum(st.c.due), 0)))).scalar_one())

    async def anything_due(self, provider: str, now: datetime) -> bool:
        """Whether any request at ``provider`` is due: one probe of the dispatch index,
        in one round trip on PostgreSQL (the hot-path engine)."""
        if self._hot is not None:
            async with self._hot.connect() as conn:
                return (await conn.execute(_any_due(provider, now))).first() is not None
        async with self._sessions() as s:
            return (await s.execute(_any_due(provider, now))).first() is not None

    async def backlog(self, provider: str, now: datetime) -> int:
        async with self._sessions() as s:
            return await self._backlog(s, provider, now)

    async def standing_drift(self) -> list[tuple[str, str, int, int, int, int]]:
        """Where the ``queue_standing`` aggregate disagrees with the tables it counts:
        (provider, owner, held, queued, held counted, queued counted). Empty while the
        triggers keep it exact, which tests check after every scenario."""
        v, r = VoiceRow, AllocationRequestRow
        counts = union_all(
            select(v.provider, v.owner, literal(1).label("h"), literal(0).label("q")).where(
                v.state.in_(HOLDING)
            ),
            select(r.provider, r.owner, literal(0), literal(1)).where(r.state == "queued"),
        ).subquery()
        counted = select(
            counts.c.provider, counts.c.owner, func.sum(counts.c.h), func.sum(counts.c.q)
        ).group_by(counts.c.provider, counts.c.owner)
        async with self._sessions() as s:
            kept = {
                (x.provider, x.owner): (x.held, x.queued)
                for x in await s.scalars(select(QueueStandingRow))
            }
            found = {(p, o): (int(h), int(q)) for p, o, h, q in await s.execute(counted)}
        return [
            (p, o, *kept.get((p, o), (0, 0)), *found.get((p, o), (0, 0)))
            for p, o in sorted(kept.keys() | found.keys())
            if kept.get((p, o), (0, 0)) != found.get((p, o), (0, 0))
        ]

    async def _fair_order(self, s: AsyncSession, provider: str, now: datetime, n: int) -> list[int]:
        """The next ``n`` due requests at ``provider``, fairly across users (see
        ``_fair_queue``). Only the requests that can have one of those places are ranked
        (keys up to ``domain.fairness.cutoff_key``), not the whole queue."""
        cutoff = await self._cutoff(s, provider, now, n)
        if not cutoff:
            return []
        order = self._fair_queue(provider, now, cutoff=cutoff)
        q = select(order.c.id).order_by(order.c.place).limit(n)
        return list((await s.execute(q)).scalars().all())

    def _fair_queue(
        self, provider: str, due_by: datetime, *, cutoff: int, held: int | None = None
    ) -> Any:
        """The requests at ``provider`` due by ``due_by`` whose key is at most ``cutoff``
        (of users holding ``held`` slots, if given), each with its ``place`` among them
        in the order the dispatcher serves (1 first): the one definition of that order,
        used to dispatch and to tell callers where they stand. Every request left out
        has a larger key, so the order among these is their order in the whole queue.

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
        ranked = self._ranked_candidates(provider, due_by, cutoff=cutoff, held=held)
        turn = (
            select(AllocationTurnRow.owner, AllocationTurnRow.last_claimed_at)
            .where(AllocationTurnRow.provider == provider)
            .subquery()
        )
        place = func.row_number().over(
            order_by=(
                ranked.c.held + ranked.c.rank,
                ranked.c.rank,
                turn.c.last_claimed_at.is_not(None),  # never served: false sorts first
                turn.c.last_claimed_at,
                ranked.c.id,
            )
        )
        return (
            select(ranked.c.id, place.label("place"))
            .outerjoin(turn, turn.c.owner == ranked.c.owner)
            .subquery("fair_queue")
        )

    def _ranked_candidates(
        self, provider: str, due_by: datetime, *, cutoff: int, held: int | None
    ) -> Any:
        """(id, owner, rank, held) of the due requests at ``provider`` whose key
        (held + rank) is at most ``cutoff``: only users holding fewer slots than the
        cut-off, and of each only their first ``cutoff - held`` requests.

        On PostgreSQL each user's requests are read through a ``LATERAL`` subquery that
        stops at that many, so the work grows with the places asked for, not with the
        queue. SQLite (one node, small queues) ranks the users' requests and filters."""
        r, q = AllocationRequestRow, QueueStandingRow
        users = select(q.owner, q.held).where(q.provider == provider, q.queued > 0, q.held < cutoff)
        if held is not None:
            users = users.where(q.held == held)
        users_q = users.subquery("users")
        due = (r.provider == provider, r.state == "queued", r.run_at <= due_by)
        if self._postgres:
            theirs = (
                select(r.id, _owner_rank(r).label("rank"))
                .where(r.owner == users_q.c.owner, *due)
                .order_by(r.priority.desc(), r.id)
                .limit(cutoff - users_q.c.held)
                .lateral("theirs")
            )
            return (
                select(theirs.c.id, users_q.c.owner, theirs.c.rank, users_q.c.held)
                .join_from(users_q, theirs, literal(True))
                .subquery("ranked")
            )
        ranked = (
            select(r.id, r.owner, _owner_rank(r).label("rank"), users_q.c.held)
            .join_from(r, users_q, users_q.c.owner == r.owner)
            .where(*due)
            .subquery("all_ranked")
        )
        return select(ranked).where(ranked.c.held + ranked.c.rank <= cutoff).subquery("ranked")


def _any_due(provider: str, now: datetime) -> Any:
    """One due request at ``provider``, if any (read from the dispatch index)."""
    r = AllocationRequestRow
    return select(r.id).where(r.provider == provider, r.state == "queued", r.run_at <= now).limit(1)


def _owner_rank(r: type[AllocationRequestRow]) -> Any:
    """A request's rank among its user's requests: by priority, then age."""
    return func.row_number().over(partition_by=r.owner, order_by=(r.priority.desc(), r.id))


_STANDING_PAGE = 512
"""Users read per query while looking for the cut-off key."""


def _keys_below(held: Any, due: Any, key: int) -> ColumnElement[int]:
    """SQL for ``domain.fairness.keys_below`` per user: how many of a user's due
    requests have a key below ``key`` (their keys are held + 1 .. held + due)."""
    below = key - 1 - held
    return case((below <= 0, 0), (below >= due, due), else_=below)
