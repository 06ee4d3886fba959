"""All of the allocator's SQL, one transaction per method.

Every state change is a fenced UPDATE (``WHERE state = expected [AND token = …]``) in a
transaction of its own; provider calls happen between these transactions, never inside
one. On PostgreSQL rows are locked with ``FOR UPDATE`` (the provider row with ``SKIP
LOCKED`` so a replica never waits for another's dispatch); on SQLite every transaction
is ``BEGIN IMMEDIATE`` (see ``voiceslot.db``), which serializes writers.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    String,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from allocator_svc.domain.breaker import Breaker, BreakerPolicy, BreakerState, ProviderOutcome
from allocator_svc.domain.reclaim import ProviderPressure, ReclaimPolicy, SlotCandidate
from allocator_svc.domain.states import (
    SLOT_HOLDING,
    EventReason,
    VoiceState,
    check_transition,
    needs_allocation,
)
from allocator_svc.models import (
    AllocationRequestRow,
    AllocationTurnRow,
    LeaseRow,
    ProviderRow,
    VoiceEventRow,
    VoiceRow,
)
from allocator_svc.records import (
    Allocating,
    Claim,
    EnsureOutcome,
    Event,
    Lease,
    ProviderStats,
    Queued,
    ReadyOutcome,
    ReclaimTarget,
    Voice,
)
from voiceslot.db import UtcDateTime
from voiceslot.errors import (
    FailedPrecondition,
    NotFound,
    QuotaExceeded,
    QuotaViolation,
    bounded,
)
from voiceslot.ids import new_id
from voiceslot.token_bucket import Bucket, TokenBucket

S = VoiceState
_HOLDING = [s.value for s in SLOT_HOLDING]


@dataclass(frozen=True)
class NewVoice:
    id: str
    owner: str
    display_name: str
    provider: str
    language: str
    sample_key: str
    sample_sha256: str
    sample_bytes: int
    idempotency_key: str | None


@dataclass(frozen=True)
class EnsureParams:
    voice_id: str
    owner: str | None
    """None for admins: any voice."""
    lease_ttl: timedelta
    holder: str
    priority: int
    per_user_max_queued: int
    mean_allocation_s: float


@dataclass(frozen=True)
class ClaimResult:
    claims: list[Claim]
    reclaims: list[ReclaimTarget]


class AllocatorRepository:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        hot_engine: AsyncEngine | None = None,
    ) -> None:
        """``hot_engine``: an autocommit engine for the lease hot path on PostgreSQL (one
        statement is its own transaction there, so BEGIN and COMMIT would be two wasted
        round trips). Without it the hot path runs in an ordinary transaction."""
        self._sessions = sessions
        self._engine: AsyncEngine = sessions.kw["bind"]
        self._postgres = self._engine.dialect.name == "postgresql"
        self._hot = hot_engine if self._postgres else None
        self._batcher = _LeaseBatcher(self._hot) if self._hot is not None else None

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    async def _lock_voice(s: AsyncSession, voice_id: str, owner: str | None) -> VoiceRow:
        q = select(VoiceRow).where(VoiceRow.id == voice_id).with_for_update()
        row = (await s.execute(q)).scalar_one_or_none()
        if row is None or (owner is not None and row.owner != owner):
            raise NotFound("voice", voice_id)
        return row

    @staticmethod
    async def _active_leases(s: AsyncSession, voice_id: str, now: datetime) -> int:
        q = select(func.count()).where(LeaseRow.voice_id == voice_id, LeaseRow.expires_at > now)
        return int((await s.execute(q)).scalar_one())

    @staticmethod
    def _record(row: VoiceRow, active_leases: int = 0) -> Voice:
        return Voice(
            id=row.id,
            owner=row.owner,
            display_name=row.display_name,
            provider=row.provider,
            language=row.language,
            state=VoiceState(row.state),
            generation=row.generation,
            provider_voice_id=row.provider_voice_id,
            pinned=row.pinned,
            sample_key=row.sample_key,
            sample_sha256=row.sample_sha256,
            sample_bytes=row.sample_bytes,
            last_error=row.last_error,
            created_at=row.created_at,
            updated_at=row.updated_at,
            state_changed_at=row.state_changed_at,
            last_used_at=row.last_used_at,
            active_leases=active_leases,
        )

    @staticmethod
    def _voice_from(m: Any, active_leases: int) -> Voice:
        """A record from a Core result row of the voices table."""
        return Voice(
            id=m["id"],
            owner=m["owner"],
            display_name=m["display_name"],
            provider=m["provider"],
            language=m["language"],
            state=VoiceState(m["state"]),
            generation=m["generation"],
            provider_voice_id=m["provider_voice_id"],
            pinned=m["pinned"],
            sample_key=m["sample_key"],
            sample_sha256=m["sample_sha256"],
            sample_bytes=m["sample_bytes"],
            last_error=m["last_error"],
            created_at=m["created_at"],
            updated_at=m["updated_at"],
            state_changed_at=m["state_changed_at"],
            last_used_at=m["last_used_at"],
            active_leases=active_leases,
        )

    @staticmethod
    def _event(
        s: AsyncSession,
        voice_id: str,
        reason: EventReason,
        now: datetime,
        *,
        before: VoiceState | None = None,
        after: VoiceState | None = None,
        message: str = "",
    ) -> None:
        s.add(
            VoiceEventRow(
                voice_id=voice_id,
                reason=reason.value,
                from_state=before.value if before else "",
                to_state=after.value if after else "",
                message=bounded(message),
                occurred_at=now,
            )
        )

    @classmethod
    def _transition(
        cls,
        s: AsyncSession,
        row: VoiceRow,
        target: VoiceState,
        reason: EventReason,
        now: datetime,
        *,
        message: str = "",
    ) -> None:
        """Move a locked row to ``target``; the transition must be a legal one."""
        current = VoiceState(row.state)
        check_transition(current, target)
        row.state = target.value
        row.state_changed_at = now
        row.updated_at = now
        cls._event(s, row.id, reason, now, before=current, after=target, message=message)

    # -- providers --------------------------------------------------------------------------

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
                        .where(VoiceRow.state.in_(_HOLDING))
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

    # -- voices -----------------------------------------------------------------------------

    async def find_by_idempotency_key(self, owner: str, key: str) -> Voice | None:
        async with self._sessions() as s:
            q = select(VoiceRow).where(VoiceRow.owner == owner, VoiceRow.idempotency_key == key)
            row = (await s.execute(q)).scalar_one_or_none()
            return None if row is None else self._record(row)

    async def create_voice(self, new: NewVoice, now: datetime) -> tuple[Voice, bool]:
        """Insert a voice; returns (voice, created). A concurrent registration with the same
        idempotency key wins the unique index and is returned instead (created False)."""
        try:
            async with self._sessions.begin() as s:
                row = VoiceRow(
                    id=new.id,
                    owner=new.owner,
                    display_name=new.display_name,
                    provider=new.provider,
                    language=new.language,
                    state=S.REGISTERED.value,
                    generation=0,
                    pinned=False,
                    sample_key=new.sample_key,
                    sample_sha256=new.sample_sha256,
                    sample_bytes=new.sample_bytes,
                    idempotency_key=new.idempotency_key,
                    last_error="",
                    created_at=now,
                    updated_at=now,
                    state_changed_at=now,
                )
                s.add(row)
                self._event(s, new.id, EventReason.REGISTERED, now, after=S.REGISTERED)
                await s.flush()
                return self._record(row), True
        except IntegrityError:
            if new.idempotency_key is None:
                raise
            existing = await self.find_by_idempotency_key(new.owner, new.idempotency_key)
            if existing is None:
                raise
            return existing, False

    async def get_voice(self, voice_id: str, now: datetime, *, owner: str | None = None) -> Voice:
        async with self._sessions() as s:
            row = await s.get(VoiceRow, voice_id)
            if row is None or (owner is not None and row.owner != owner):
                raise NotFound("voice", voice_id)
            return self._record(row, await self._active_leases(s, voice_id, now))

    async def list_voices(
        self,
        now: datetime,
        *,
        owner: str | None,
        provider: str = "",
        state: VoiceState | None = None,
        after: tuple[datetime, str] | None = None,
        limit: int,
        holding_only: bool = False,
    ) -> list[Voice]:
        """Newest first, keyset-paginated on (created_at, id)."""
        async with self._sessions() as s:
            q = select(VoiceRow)
            if owner is not None:
                q = q.where(VoiceRow.owner == owner)
            if provider:
                q = q.where(VoiceRow.provider == provider)
            if state is not None:
                q = q.where(VoiceRow.state == state.value)
            if holding_only:
                q = q.where(VoiceRow.state.in_(_HOLDING))
            if after is not None:
                at, vid = after
                q = q.where(
                    or_(
                        VoiceRow.created_at < at, and_(VoiceRow.created_at == at, VoiceRow.id < vid)
                    )
                )
            q = q.order_by(VoiceRow.created_at.desc(), VoiceRow.id.desc()).limit(limit)
            rows = (await s.execute(q)).scalars().all()
            leases = await self._lease_counts(s, [r.id for r in rows], now)
            return [self._record(r, leases.get(r.id, 0)) for r in rows]

    async def _lease_counts(
        self, s: AsyncSession, voice_ids: list[str], now: datetime
    ) -> dict[str, int]:
        if not voice_ids:
            return {}
        q = (
            select(LeaseRow.voice_id, func.count())
            .where(LeaseRow.voice_id.in_(voice_ids), LeaseRow.expires_at > now)
            .group_by(LeaseRow.voice_id)
        )
        return {vid: int(n) for vid, n in (await s.execute(q)).all()}

    async def lease_holders(self, voice_ids: list[str], now: datetime) -> dict[str, str]:
        """The holder of each voice's most recently taken active lease."""
        if not voice_ids:
            return {}
        async with self._sessions() as s:
            q = (
                select(LeaseRow.voice_id, LeaseRow.holder)
                .where(LeaseRow.voice_id.in_(voice_ids), LeaseRow.expires_at > now)
                .order_by(LeaseRow.created_at)
            )
            return dict((await s.execute(q)).all())

    async def begin_delete(
        self, voice_id: str, now: datetime, *, owner: str | None, force: bool
    ) -> tuple[Voice, bool]:
        """Start deleting a voice; returns (voice, pending).

        A READY voice still holds its remote copy: its row stays, RECLAIMING, so the slot
        stays counted until the caller has deleted the remote copy and calls
        ``finish_delete`` (pending True). Removing the row first would let a dispatcher
        clone into the slot while the old copy still occupies it at the provider. Any
        other voice's row is removed at once (events stay); if it had a remote copy
        (forced delete mid-allocation or mid-reclaim), reconciliation finds the orphan by
        its label.
        """
        async with self._sessions.begin() as s:
            row = await self._lock_voice(s, voice_id, owner)
            leases = await self._active_leases(s, voice_id, now)
            state = VoiceState(row.state)
            if not force and leases:
                raise FailedPrecondition(f"voice {voice_id} is leased ({leases} active); use force")
            if not force and state in (S.ALLOCATING, S.RECLAIMING):
                raise FailedPrecondition(
                    f"voice {voice_id} is {state.value}; retry shortly or use force"
                )
            voice = self._record(row, leases)
            if state == S.READY and row.provider_voice_id:
                self._transition(s, row, S.RECLAIMING, EventReason.DELETED, now, message="deleting")
                return voice, True
            await s.delete(row)
            self._event(s, voice_id, EventReason.DELETED, now, before=state)
            return voice, False

    async def finish_delete(self, voice_id: str, now: datetime) -> None:
        """Remove the row of a voice whose deletion ``begin_delete`` started."""
        async with self._sessions.begin() as s:
            row = await s.get(VoiceRow, voice_id, with_for_update=True)
            if row is None:
                return
            state = VoiceState(row.state)
            await s.delete(row)
            self._event(s, voice_id, EventReason.DELETED, now, before=state)

    async def set_pinned(self, voice_id: str, pinned: bool, now: datetime) -> Voice:
        async with self._sessions.begin() as s:
            row = await self._lock_voice(s, voice_id, None)
            if row.pinned != pinned:
                row.pinned = pinned
                row.updated_at = now
                self._event(
                    s, voice_id, EventReason.PINNED if pinned else EventReason.UNPINNED, now
                )
            return self._record(row, await self._active_leases(s, voice_id, now))

    async def list_events(self, voice_id: str, *, before_id: int | None, limit: int) -> list[Event]:
        async with self._sessions() as s:
            q = select(VoiceEventRow).where(VoiceEventRow.voice_id == voice_id)
            if before_id is not None:
                q = q.where(VoiceEventRow.id < before_id)
            rows = (
                (await s.execute(q.order_by(VoiceEventRow.id.desc()).limit(limit))).scalars().all()
            )
            return [
                Event(
                    id=r.id,
                    voice_id=r.voice_id,
                    reason=EventReason(r.reason),
                    from_state=VoiceState(r.from_state) if r.from_state else None,
                    to_state=VoiceState(r.to_state) if r.to_state else None,
                    message=r.message,
                    occurred_at=r.occurred_at,
                )
                for r in rows
            ]

    # -- ensure active and leases ------------------------------------------------------------

    async def ensure_active(self, p: EnsureParams, now: datetime) -> EnsureOutcome:
        """Lease a READY voice, or enqueue its allocation, or say where it stands.

        The hot path (a READY voice: lease insert + touch) is tried first, without the
        ORM and without locking the row beforehand: the touch is a fenced ``UPDATE …
        WHERE state = 'ready'``, so a concurrent reclaim either sees the lease (it locks
        the row and counts leases after this commits) or wins first, and then no lease
        is made. Only when that misses does the slow path lock the row and decide.
        """
        ready = await self._lease_hot(p, now)
        if ready is not None:
            return ready
        async with self._sessions.begin() as s:
            row = await self._lock_voice(s, p.voice_id, p.owner)
            state = VoiceState(row.state)
            if state == S.READY:  # became ready since the first look; we hold the lock now
                ready = await self._lease_ready(await s.connection(), p, now)
                assert ready is not None
                return ready
            if needs_allocation(state):
                await self._check_user_cap(s, row.owner, p.per_user_max_queued)
                await self._enqueue(s, row, p.priority, now)
                state = S.QUEUED
            voice = self._record(row, 0)
            if state == S.QUEUED:
                position = await self._queue_position(s, row.id, row.provider)
                capacity = (await s.get(ProviderRow, row.provider)).capacity
                return Queued(
                    voice, position, estimate_wait_s(position, capacity, p.mean_allocation_s)
                )
            # ALLOCATING, or RECLAIMING (it will be IDLE shortly and re-queued on the next call)
            return Allocating(voice, p.mean_allocation_s)

    async def _lease_hot(self, p: EnsureParams, now: datetime) -> ReadyOutcome | None:
        if self._batcher is not None:
            return await self._batcher.lease(p, now)
        async with self._engine.begin() as conn:
            return await self._lease_ready(conn, p, now)

    async def _lease_ready(
        self, conn: AsyncConnection, p: EnsureParams, now: datetime
    ) -> ReadyOutcome | None:
        """If the voice is READY (and the caller's): touch it, insert a lease and its
        event, and count the active leases. None when it is not READY (or not theirs).

        On PostgreSQL this is one statement (data-modifying CTEs); SQLite runs the same
        steps as separate statements in its ``BEGIN IMMEDIATE`` transaction. Statements
        are built once (``_LEASE``) and only bound here: building SQLAlchemy constructs
        per call cost more than the database work.
        """
        lease_id = new_id("ls")
        expires = now + p.lease_ttl
        params = {
            "b_voice_id": p.voice_id,
            "b_owner": p.owner,
            "b_now": now,
            "b_expires": expires,
            "b_lease_id": lease_id,
            "b_holder": p.holder,
            "b_message": bounded(p.holder),
        }
        stmts = _LEASE.for_owner(p.owner is not None)
        if self._postgres:
            row = (await conn.execute(stmts.pg, params)).one_or_none()
            if row is None:
                return None
            m = row._mapping
            voice = self._voice_from(m, int(m["active"]))
        else:
            row = (await conn.execute(stmts.touch, params)).one_or_none()
            if row is None:
                return None
            m = row._mapping
            params["b_owner"] = m["owner"]
            await conn.execute(_LEASE.insert_lease, params)
            await conn.execute(_LEASE.insert_event, params)
            voice = self._voice_from(
                m, int((await conn.execute(_LEASE.count, params)).scalar_one())
            )
        return ReadyOutcome(voice, Lease(lease_id, p.voice_id, p.holder, expires))

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
        # The key names the generation this request will clone: asking again for the same
        # allocation (a retry of this call, another replica) hits the unique index.
        s.add(
            AllocationRequestRow(
                voice_id=row.id,
                owner=row.owner,
                provider=row.provider,
                priority=priority,
                state="queued",
                attempts=0,
                run_at=now,
                idempotency_key=f"{row.id}:{row.generation + 1}",
                last_error="",
                created_at=now,
                updated_at=now,
            )
        )
        self._transition(s, row, S.QUEUED, EventReason.ENQUEUED, now)
        await s.flush()

    async def _queue_position(self, s: AsyncSession, voice_id: str, provider: str) -> int:
        mine = (
            await s.execute(
                select(AllocationRequestRow.id).where(
                    AllocationRequestRow.voice_id == voice_id,
                    AllocationRequestRow.state == "queued",
                )
            )
        ).scalar_one_or_none()
        if mine is None:
            return 1
        ahead = (
            await s.execute(
                select(func.count()).where(
                    AllocationRequestRow.provider == provider,
                    AllocationRequestRow.state == "queued",
                    AllocationRequestRow.id < mine,
                )
            )
        ).scalar_one()
        return int(ahead) + 1

    async def renew_lease(
        self, lease_id: str, ttl: timedelta, now: datetime, *, owner: str | None
    ) -> Lease:
        async with self._sessions.begin() as s:
            lease = await s.get(LeaseRow, lease_id, with_for_update=True)
            if (
                lease is None
                or lease.expires_at <= now
                or (owner is not None and lease.owner != owner)
            ):
                raise NotFound("lease", lease_id)
            lease.expires_at = now + ttl
            await s.execute(
                update(VoiceRow).where(VoiceRow.id == lease.voice_id).values(last_used_at=now)
            )
            return Lease(lease.id, lease.voice_id, lease.holder, lease.expires_at)

    async def release_lease(self, lease_id: str, now: datetime, *, owner: str | None) -> str | None:
        """End a lease (unknown or already ended: nothing to do). Returns the provider of
        its voice, whose dispatcher may now reclaim it for someone waiting."""
        async with self._sessions.begin() as s:
            lease = await s.get(LeaseRow, lease_id, with_for_update=True)
            if lease is None or (owner is not None and lease.owner != owner):
                return None
            await s.delete(lease)
            provider = (
                await s.execute(
                    update(VoiceRow)
                    .where(VoiceRow.id == lease.voice_id)
                    .values(last_used_at=now)
                    .returning(VoiceRow.provider)
                )
            ).scalar_one_or_none()
            self._event(s, lease.voice_id, EventReason.LEASE_RELEASED, now, message=lease.holder)
            return provider

    async def expire_leases(self, now: datetime) -> list[str]:
        """Delete expired leases; ids of the voices that had some. ``DELETE … RETURNING``
        so that replicas sweeping at once record each expiry once."""
        async with self._sessions.begin() as s:
            rows = (
                await s.execute(
                    delete(LeaseRow)
                    .where(LeaseRow.expires_at <= now)
                    .returning(LeaseRow.voice_id, LeaseRow.holder)
                )
            ).all()
            for voice_id, holder in rows:
                self._event(s, voice_id, EventReason.LEASE_EXPIRED, now, message=holder)
            return sorted({voice_id for voice_id, _ in rows})

    # -- dispatch ---------------------------------------------------------------------------

    async def claim(
        self,
        provider: str,
        now: datetime,
        *,
        limit: int,
        allocation_timeout: timedelta,
        reclaim_policy: ReclaimPolicy,
        breaker: BreakerPolicy | None = None,
        bucket: TokenBucket | None = None,
    ) -> ClaimResult:
        """Take due requests for ``provider`` up to what may start now, fairly across
        users, and pick reclaim victims if it is full with requests waiting.

        What may start is the least of: free slots, ``limit``, the breaker's admission
        (none while open, one probe when half-open) and the token bucket's whole tokens.
        All of it is decided under the provider row's lock (``SKIP LOCKED``: a replica
        that finds it taken leaves this round to the one holding it), and only this
        method moves voices into slot-holding states, so concurrent dispatchers can never
        overshoot the capacity, probe twice or overdraw the bucket.
        """
        breaker = breaker or BreakerPolicy()
        bucket = bucket or TokenBucket()
        async with self._sessions.begin() as s:
            prov = (
                await s.execute(
                    select(ProviderRow)
                    .where(ProviderRow.name == provider)
                    .with_for_update(skip_locked=True)
                )
            ).scalar_one_or_none()
            if prov is None:
                return ClaimResult([], [])  # another replica is dispatching this provider
            state = Breaker(
                BreakerState(prov.breaker_state), prov.breaker_failures, prov.breaker_open_until
            )
            after, admitted = breaker.admit(state, now)
            if admitted == 0:
                return ClaimResult([], [])  # open: no clones, and no reclaims for them
            used = int(
                (
                    await s.execute(
                        select(func.count()).where(
                            VoiceRow.provider == provider, VoiceRow.state.in_(_HOLDING)
                        )
                    )
                ).scalar_one()
            )
            free = max(0, prov.capacity - used)
            due = (
                (AllocationRequestRow.provider == provider)
                & (AllocationRequestRow.state == "queued")
                & (AllocationRequestRow.run_at <= now)
            )
            backlog = int((await s.execute(select(func.count()).where(due))).scalar_one())
            tokens = Bucket(prov.tokens, prov.tokens_at)
            may_start = min(free, limit, bucket.available(tokens, now))
            if admitted is not None:
                may_start = min(may_start, admitted)
            claims: list[Claim] = []
            if may_start and backlog:
                owners = set()
                for req_id in await self._fair_order(s, provider, now, may_start):
                    claimed = await self._claim_one(s, req_id, now, allocation_timeout)
                    if claimed is not None:
                        claims.append(claimed[0])
                        owners.add(claimed[1])
                if owners:
                    await self._take_turns(s, provider, sorted(owners), now)
            if claims:
                spent = bucket.spend(tokens, len(claims), now)
                prov.tokens, prov.tokens_at = spent.tokens, spent.at
                if breaker.probe_started(after, len(claims)):
                    prov.breaker_state = after.state.value
                    prov.breaker_open_until = after.open_until
                prov.updated_at = now
            reclaims: list[ReclaimTarget] = []
            waiting = backlog - len(claims)
            if waiting > 0 and free - len(claims) <= 0 and state.state == BreakerState.CLOSED:
                reclaims = await self._pick_reclaims(s, prov, waiting, now, reclaim_policy)
            return ClaimResult(claims, reclaims)

    async def _fair_order(self, s: AsyncSession, provider: str, now: datetime, n: int) -> list[int]:
        """The next ``n`` due requests at ``provider``, fairly across users.

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
            .where(r.provider == provider, r.state == "queued", r.run_at <= now)
            .subquery()
        )
        held = (
            select(VoiceRow.owner, func.count().label("held"))
            .where(VoiceRow.provider == provider, VoiceRow.state.in_(_HOLDING))
            .group_by(VoiceRow.owner)
            .subquery()
        )
        turn = (
            select(AllocationTurnRow.owner, AllocationTurnRow.last_claimed_at)
            .where(AllocationTurnRow.provider == provider)
            .subquery()
        )
        q = (
            select(ranked.c.id)
            .outerjoin(held, held.c.owner == ranked.c.owner)
            .outerjoin(turn, turn.c.owner == ranked.c.owner)
            .order_by(
                func.coalesce(held.c.held, 0) + ranked.c.rank,
                ranked.c.rank,
                turn.c.last_claimed_at.is_not(None),  # never served: false sorts first
                turn.c.last_claimed_at,
                ranked.c.id,
            )
            .limit(n)
        )
        return list((await s.execute(q)).scalars().all())

    async def _take_turns(
        self, s: AsyncSession, provider: str, owners: list[str], now: datetime
    ) -> None:
        """Record that these users were just served at ``provider`` (one statement)."""
        insert_ = pg_insert if self._postgres else sqlite_insert
        await s.execute(
            insert_(AllocationTurnRow)
            .values([{"provider": provider, "owner": o, "last_claimed_at": now} for o in owners])
            .on_conflict_do_update(
                index_elements=[AllocationTurnRow.provider, AllocationTurnRow.owner],
                set_={"last_claimed_at": now},
            )
        )

    async def _claim_one(
        self, s: AsyncSession, req_id: int, now: datetime, allocation_timeout: timedelta
    ) -> tuple[Claim, str] | None:
        """Take one queued request (and its voice) in the claim's transaction: (the claim,
        its owner), or None if either moved on meanwhile."""
        req = await s.get(AllocationRequestRow, req_id, with_for_update=True)
        voice = await s.get(VoiceRow, req.voice_id, with_for_update=True) if req else None
        if req is None or voice is None or req.state != "queued" or voice.state != S.QUEUED.value:
            return None
        token = uuid.uuid4().hex
        req.state, req.lease_token = "leased", token
        req.lease_expires_at = now + allocation_timeout
        req.attempts += 1
        req.updated_at = now
        voice.generation += 1
        voice.allocation_token = token
        self._transition(
            s,
            voice,
            S.ALLOCATING,
            EventReason.ALLOCATION_STARTED,
            now,
            message=f"attempt {req.attempts}",
        )
        claim = Claim(
            request_id=req.id,
            voice_id=voice.id,
            provider=voice.provider,
            generation=voice.generation,
            token=token,
            attempts=req.attempts,
            sample_key=voice.sample_key,
            language=voice.language,
        )
        return claim, req.owner

    async def _pick_reclaims(
        self, s: AsyncSession, prov: ProviderRow, waiting: int, now: datetime, policy: ReclaimPolicy
    ) -> list[ReclaimTarget]:
        rows = (
            (
                await s.execute(
                    select(VoiceRow).where(
                        VoiceRow.provider == prov.name, VoiceRow.state == S.READY.value
                    )
                )
            )
            .scalars()
            .all()
        )
        leases = await self._lease_counts(s, [r.id for r in rows], now)
        candidates = [
            SlotCandidate(r.id, r.last_used_at, r.state_changed_at, r.pinned, leases.get(r.id, 0))
            for r in rows
        ]
        pressure = ProviderPressure(
            backlog=waiting, free_slots=0, add_edit_remaining=prov.add_edit_remaining
        )
        by_id = {r.id: r for r in rows}
        targets = []
        # Locked in id order, as the batched lease path locks voices: two transactions
        # that each lock several voices in the same order cannot deadlock.
        for voice_id in sorted(policy.choose(candidates, pressure, now=now)):
            row = by_id[voice_id]
            # The candidates were read without locks: re-check under the row's lock, as a
            # lease taken since (it commits before our lock is granted) must win.
            await s.refresh(row, with_for_update=True)
            if (
                row.state != S.READY.value
                or not row.provider_voice_id
                or row.pinned
                or await self._active_leases(s, row.id, now)
            ):
                continue
            self._transition(s, row, S.RECLAIMING, EventReason.RECLAIMED_FOR_BACKLOG, now)
            targets.append(
                ReclaimTarget(
                    row.id, row.provider, row.provider_voice_id, EventReason.RECLAIMED_FOR_BACKLOG
                )
            )
        return targets

    async def complete_allocation(
        self, claim: Claim, provider_voice_id: str, now: datetime, *, adopted: bool
    ) -> bool:
        """READY, fenced by the claim's token. False: the allocation was reset or the voice
        deleted meanwhile, and the remote voice just made belongs to nobody.

        On PostgreSQL one statement on the autocommit engine (the fenced UPDATE, its event
        and the request's completion): every allocation ends here, and a transaction of
        separate statements cost a round trip each.
        """
        reason = EventReason.ADOPTED if adopted else EventReason.CLONED
        if self._hot is not None:
            check_transition(S.ALLOCATING, S.READY)
            params = {
                "voice_id": claim.voice_id,
                "token": claim.token,
                "remote": provider_voice_id,
                "message": bounded(provider_voice_id),
                "reason": reason.value,
                "request_id": claim.request_id,
                "now": naive_utc(now),
            }
            async with self._hot.connect() as conn:
                return bool((await conn.execute(_PG_COMPLETE, params)).scalar_one())
        async with self._sessions.begin() as s:
            voice = await s.get(VoiceRow, claim.voice_id, with_for_update=True)
            if (
                voice is None
                or voice.state != S.ALLOCATING.value
                or voice.allocation_token != claim.token
            ):
                return False
            voice.provider_voice_id = provider_voice_id
            voice.allocation_token = None
            voice.last_error = ""
            voice.last_used_at = now
            self._transition(s, voice, S.READY, reason, now, message=provider_voice_id)
            await s.execute(
                update(AllocationRequestRow)
                .where(AllocationRequestRow.id == claim.request_id)
                .values(state="done", lease_token=None, updated_at=now)
            )
            return True

    async def fail_allocation(
        self,
        claim: Claim,
        error: str,
        now: datetime,
        *,
        retry_at: datetime | None,
        reason: EventReason = EventReason.ALLOCATION_RETRY,
    ) -> VoiceState | None:
        """Back to the queue at ``retry_at`` (recorded with ``reason``), or dead-lettered when
        it is None. Returns the voice's new state, or None if the claim was fenced off."""
        async with self._sessions.begin() as s:
            voice = await s.get(VoiceRow, claim.voice_id, with_for_update=True)
            req = await s.get(AllocationRequestRow, claim.request_id, with_for_update=True)
            if (
                voice is None
                or req is None
                or voice.state != S.ALLOCATING.value
                or voice.allocation_token != claim.token
            ):
                return None
            voice.allocation_token = None
            voice.last_error = bounded(error)
            req.last_error = bounded(error)
            req.lease_token, req.lease_expires_at, req.updated_at = None, None, now
            if retry_at is None:
                req.state = "dead"
                self._transition(s, voice, S.FAILED, EventReason.DEAD_LETTERED, now, message=error)
                return S.FAILED
            req.state, req.run_at = "queued", retry_at
            self._transition(s, voice, S.QUEUED, reason, now, message=error)
            return S.QUEUED

    # -- reclaim ----------------------------------------------------------------------------

    async def begin_reclaim(
        self, voice_id: str, reason: EventReason, now: datetime, *, force: bool
    ) -> ReclaimTarget:
        async with self._sessions.begin() as s:
            row = await self._lock_voice(s, voice_id, None)
            if row.state != S.READY.value or not row.provider_voice_id:
                raise FailedPrecondition(f"voice {voice_id} is {row.state}, not ready")
            leases = await self._active_leases(s, voice_id, now)
            if not force and (leases or row.pinned):
                why = "pinned" if row.pinned else f"leased ({leases} active)"
                raise FailedPrecondition(f"voice {voice_id} is {why}; use force")
            self._transition(s, row, S.RECLAIMING, reason, now)
            return ReclaimTarget(row.id, row.provider, row.provider_voice_id, reason)

    async def finish_reclaim(
        self, target: ReclaimTarget, now: datetime, *, deleted: bool, error: str = ""
    ) -> None:
        """IDLE once the remote copy is gone; back to READY if deleting it failed."""
        async with self._sessions.begin() as s:
            row = await s.get(VoiceRow, target.voice_id, with_for_update=True)
            if (
                row is None
                or row.state != S.RECLAIMING.value
                or (row.provider_voice_id or "") != target.provider_voice_id
            ):
                return  # finished already (a stuck-reclaim sweep, a delete), or another copy
            if deleted:
                row.provider_voice_id = None
                self._transition(s, row, S.IDLE, target.reason, now)
            else:
                row.last_error = bounded(error)
                self._transition(
                    s, row, S.READY, target.reason, now, message=f"reclaim failed: {error}"
                )

    # -- provider health ---------------------------------------------------------------------

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
            current = Breaker(
                BreakerState(prov.breaker_state), prov.breaker_failures, prov.breaker_open_until
            )
            after = breaker.record(current, outcome, now)
            prov.breaker_state = after.state.value
            prov.breaker_failures = after.failures
            prov.breaker_open_until = after.open_until
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
            return (
                Breaker(
                    BreakerState(prov.breaker_state),
                    prov.breaker_failures,
                    prov.breaker_open_until,
                ),
                Bucket(prov.tokens, prov.tokens_at),
            )

    # -- maintenance ------------------------------------------------------------------------

    async def stuck_reclaims(self, before: datetime, *, provider: str = "") -> list[ReclaimTarget]:
        """Voices RECLAIMING since before ``before``: the replica deleting their remote copy
        died or hung. Their slot stays counted until someone finishes the job."""
        async with self._sessions() as s:
            q = select(VoiceRow).where(
                VoiceRow.state == S.RECLAIMING.value, VoiceRow.state_changed_at <= before
            )
            if provider:
                q = q.where(VoiceRow.provider == provider)
            return [
                ReclaimTarget(r.id, r.provider, r.provider_voice_id or "", EventReason.STUCK_RESET)
                for r in (await s.execute(q)).scalars().all()
            ]

    async def stuck_allocations(self, now: datetime, *, provider: str = "") -> list[Claim]:
        """In-flight allocations whose dispatch lease expired: their dispatcher died or hung."""
        async with self._sessions() as s:
            r = AllocationRequestRow
            q = (
                select(r, VoiceRow)
                .join(VoiceRow, VoiceRow.id == r.voice_id)
                .where(
                    r.state == "leased",
                    r.lease_expires_at <= now,
                    VoiceRow.state == S.ALLOCATING.value,
                )
            )
            if provider:
                q = q.where(r.provider == provider)
            return [_in_flight_claim(req, v) for req, v in (await s.execute(q)).all()]

    async def claim_for_voice(self, voice_id: str) -> Claim:
        """The in-flight allocation of a voice (for an admin's stuck reset)."""
        async with self._sessions() as s:
            v = await s.get(VoiceRow, voice_id)
            if v is None:
                raise NotFound("voice", voice_id)
            if v.state != S.ALLOCATING.value:
                raise FailedPrecondition(f"voice {voice_id} is {v.state}, not allocating")
            req = (
                await s.execute(
                    select(AllocationRequestRow).where(
                        AllocationRequestRow.voice_id == voice_id,
                        AllocationRequestRow.state == "leased",
                    )
                )
            ).scalar_one()
            return _in_flight_claim(req, v)

    async def ready_voices(self, provider: str) -> list[Voice]:
        async with self._sessions() as s:
            q = select(VoiceRow).where(
                VoiceRow.provider == provider, VoiceRow.state == S.READY.value
            )
            return [self._record(r) for r in (await s.execute(q)).scalars().all()]

    async def known_labels(self, provider: str) -> set[tuple[str, int]]:
        """(voice id, generation) of every voice at ``provider`` that may own a remote copy."""
        async with self._sessions() as s:
            q = select(VoiceRow.id, VoiceRow.generation).where(VoiceRow.provider == provider)
            return set((await s.execute(q)).all())

    async def mark_remote_missing(
        self, voice_id: str, provider_voice_id: str, now: datetime
    ) -> bool:
        async with self._sessions.begin() as s:
            row = await s.get(VoiceRow, voice_id, with_for_update=True)
            if (
                row is None
                or row.state != S.READY.value
                or row.provider_voice_id != provider_voice_id
            ):
                return False
            row.provider_voice_id = None
            self._transition(
                s,
                row,
                S.IDLE,
                EventReason.DRIFT_REMOTE_MISSING,
                now,
                message=f"{provider_voice_id} is gone at {row.provider}",
            )
            return True

    async def idle_ready_voices(
        self, provider: str, idle_since: datetime, now: datetime
    ) -> list[str]:
        async with self._sessions() as s:
            q = select(VoiceRow.id).where(
                VoiceRow.provider == provider,
                VoiceRow.state == S.READY.value,
                VoiceRow.pinned.is_(False),
                func.coalesce(VoiceRow.last_used_at, VoiceRow.state_changed_at) <= idle_since,
            )
            q = q.order_by(
                func.coalesce(VoiceRow.last_used_at, VoiceRow.state_changed_at), VoiceRow.id
            )
            ids = list((await s.execute(q)).scalars().all())
            leased = await self._lease_counts(s, ids, now)
            return [i for i in ids if not leased.get(i)]

    async def backlog(self, provider: str, now: datetime) -> int:
        async with self._sessions() as s:
            q = select(func.count()).where(
                AllocationRequestRow.provider == provider,
                AllocationRequestRow.state == "queued",
                AllocationRequestRow.run_at <= now,
            )
            return int((await s.execute(q)).scalar_one())

    async def watch_key(self, voice_id: str) -> tuple[str, datetime] | None:
        async with self._sessions() as s:
            row = (
                await s.execute(
                    select(VoiceRow.state, VoiceRow.updated_at).where(VoiceRow.id == voice_id)
                )
            ).one_or_none()
            return None if row is None else (row[0], row[1])


@dataclass(frozen=True)
class _LeaseVariant:
    touch: Any
    """UPDATE voices … RETURNING the voice (SQLite's first step)."""
    pg: Any
    """The whole lease as one statement (PostgreSQL)."""


class _LeaseStatements:
    """The hot path's statements, built once with bind parameters ``b_voice_id``,
    ``b_owner`` (only in the owner-checked variant), ``b_now``, ``b_expires``,
    ``b_lease_id``, ``b_holder``, ``b_message``. (Prefixed: a parameter named like a
    column of an UPDATE's table would be taken as one more SET.)"""

    def __init__(self) -> None:
        now = bindparam("b_now", type_=UtcDateTime())
        self.insert_lease = insert(LeaseRow).values(
            id=bindparam("b_lease_id"),
            voice_id=bindparam("b_voice_id"),
            owner=bindparam("b_owner"),
            holder=bindparam("b_holder"),
            expires_at=bindparam("b_expires", type_=UtcDateTime()),
            created_at=now,
        )
        self.insert_event = insert(VoiceEventRow).values(
            voice_id=bindparam("b_voice_id"),
            reason=EventReason.LEASED.value,
            from_state="",
            to_state="",
            message=bindparam("b_message"),
            occurred_at=now,
        )
        self.count = select(func.count()).where(
            LeaseRow.voice_id == bindparam("b_voice_id"), LeaseRow.expires_at > now
        )
        self._variants = {False: self._variant(False), True: self._variant(True)}

    def for_owner(self, checked: bool) -> _LeaseVariant:
        return self._variants[checked]

    def _variant(self, owner_checked: bool) -> _LeaseVariant:
        now = bindparam("b_now", type_=UtcDateTime())
        touch = (
            update(VoiceRow)
            .where(VoiceRow.id == bindparam("b_voice_id"), VoiceRow.state == S.READY.value)
            .values(last_used_at=now)
        )
        if owner_checked:
            touch = touch.where(VoiceRow.owner == bindparam("b_owner"))
        columns = list(VoiceRow.__table__.c)
        v = touch.returning(*columns).cte("v")
        lease = insert(LeaseRow).from_select(
            ["id", "voice_id", "owner", "holder", "expires_at", "created_at"],
            select(
                bindparam("b_lease_id", type_=String()),
                v.c.id,
                v.c.owner,
                bindparam("b_holder", type_=String()),
                bindparam("b_expires", type_=UtcDateTime()),
                now,
            ),
        )
        event = insert(VoiceEventRow).from_select(
            ["voice_id", "reason", "from_state", "to_state", "message", "occurred_at"],
            select(
                v.c.id,
                literal(EventReason.LEASED.value),
                literal(""),
                literal(""),
                bindparam("b_message", type_=String()),
                now,
            ),
        )
        # The count runs on the statement's snapshot, which does not include the lease
        # inserted beside it: hence the + 1.
        active = (
            select(func.count())
            .where(LeaseRow.voice_id == bindparam("b_voice_id"), LeaseRow.expires_at > now)
            .scalar_subquery()
        )
        pg = (
            select(*[v.c[c.name] for c in columns], (active + 1).label("active"))
            .add_cte(lease.cte("l"))
            .add_cte(event.cte("e"))
        )
        return _LeaseVariant(touch=touch.returning(*columns), pg=pg)


_LEASE = _LeaseStatements()


# PostgreSQL: many callers' hot-path leases in one statement. Voices are locked in id
# order (no deadlock between batches, or with reclaims, which lock in id order too), each
# request is granted only if its voice is READY and, for a user, theirs.
_PG_LEASE_BATCH = text(
    """
WITH req AS (
    SELECT * FROM unnest(
        CAST(:idx AS integer[]), CAST(:voice_ids AS varchar[]), CAST(:owners AS varchar[]),
        CAST(:lease_ids AS varchar[]), CAST(:holders AS varchar[]),
        CAST(:expires AS timestamp[])
    ) AS r(idx, voice_id, owner, lease_id, holder, expires_at)
),
locked AS (
    SELECT v.id FROM voices v
    WHERE v.state = 'ready' AND EXISTS (
        SELECT 1 FROM req
        WHERE req.voice_id = v.id AND (req.owner IS NULL OR req.owner = v.owner)
    )
    ORDER BY v.id
    FOR UPDATE OF v
),
touched AS (
    UPDATE voices SET last_used_at = CAST(:now AS timestamp)
    FROM locked WHERE voices.id = locked.id
    RETURNING voices.*
),
granted AS (
    SELECT req.*, t.owner AS voice_owner
    FROM req JOIN touched t ON t.id = req.voice_id AND (req.owner IS NULL OR req.owner = t.owner)
),
new_leases AS (
    INSERT INTO leases (id, voice_id, owner, holder, expires_at, created_at)
    SELECT lease_id, voice_id, voice_owner, holder, expires_at, CAST(:now AS timestamp)
    FROM granted
),
new_events AS (
    INSERT INTO voice_events (voice_id, reason, from_state, to_state, message, occurred_at)
    SELECT voice_id, 'leased', '', '', holder, CAST(:now AS timestamp) FROM granted
)
SELECT g.idx, t.*,
    (SELECT count(*) FROM leases l
     WHERE l.voice_id = t.id AND l.expires_at > CAST(:now AS timestamp))
  + (SELECT count(*) FROM granted g2 WHERE g2.voice_id = t.id) AS active
FROM granted g JOIN touched t ON t.id = g.voice_id
"""
)
_VOICE_TIMES = ("created_at", "updated_at", "state_changed_at", "last_used_at")

# PostgreSQL: ALLOCATING -> READY fenced by the claim's token, its event and the request's
# completion, as one statement. Returns 1 if the voice was ours to complete, else 0.
_PG_COMPLETE = text(
    """
WITH v AS (
    UPDATE voices SET state = 'ready', provider_voice_id = :remote, allocation_token = NULL,
        last_error = '', last_used_at = CAST(:now AS timestamp),
        state_changed_at = CAST(:now AS timestamp), updated_at = CAST(:now AS timestamp)
    WHERE id = :voice_id AND state = 'allocating' AND allocation_token = :token
    RETURNING id
),
e AS (
    INSERT INTO voice_events (voice_id, reason, from_state, to_state, message, occurred_at)
    SELECT id, :reason, 'allocating', 'ready', :message, CAST(:now AS timestamp) FROM v
),
r AS (
    UPDATE allocation_requests
    SET state = 'done', lease_token = NULL, updated_at = CAST(:now AS timestamp)
    WHERE id = :request_id AND EXISTS (SELECT 1 FROM v)
)
SELECT count(*) FROM v
"""
)


def naive_utc(t: datetime) -> datetime:
    """How ``UtcDateTime`` stores a moment, for hand-written statements."""
    return t.astimezone(UTC).replace(tzinfo=None)


@dataclass
class _PendingLease:
    params: EnsureParams
    now: datetime
    lease_id: str
    future: asyncio.Future[ReadyOutcome | None]


class _LeaseBatcher:
    """Coalesces concurrent hot-path leases into one statement on PostgreSQL.

    Every call to the database costs the same fixed overhead in this process (SQLAlchemy,
    the driver, a socket write that wakes the server) whatever the statement does, and
    under load that overhead, not the database, is what limits EnsureActiveVoice.
    Callers queue here; up to ``max_inflight`` batches are in flight at once and each
    takes everything queued so far (up to ``max_batch``). One caller alone still goes out
    at once, in a batch of one; under load, batches grow by themselves.

    The statement runs on an autocommit engine: it is its own transaction, atomic, one
    round trip. That engine skips pre-ping, so a connection the server dropped fails on
    use instead, and the batch is retried once on a fresh one (also once on a deadlock,
    which the id-ordered locking should make impossible).
    """

    def __init__(self, engine: AsyncEngine, *, max_batch: int = 128, max_inflight: int = 4) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._queue: list[_PendingLease] = []
        self._inflight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def lease(self, p: EnsureParams, now: datetime) -> ReadyOutcome | None:
        loop = asyncio.get_running_loop()
        item = _PendingLease(p, now, new_id("ls"), loop.create_future())
        self._queue.append(item)
        if not self._scheduled:
            # Start on the next turn of the loop, so that callers arriving in this one
            # share the batch.
            self._scheduled = True
            loop.call_soon(self._start)
        return await item.future

    def _start(self) -> None:
        self._scheduled = False
        while self._queue and self._inflight < self._max_inflight:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._flush(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[_PendingLease]) -> None:
        try:
            rows = await self._execute(batch)
        except Exception as exc:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
        else:
            granted = {int(m["idx"]): m for m in rows}
            for i, item in enumerate(batch):
                if item.future.done():
                    continue  # the caller went away; its lease simply expires
                m = granted.get(i)
                item.future.set_result(None if m is None else self._outcome(item, m))
        finally:
            self._inflight -= 1
            self._start()

    async def _execute(self, batch: list[_PendingLease]) -> list[Any]:
        params = {
            "idx": list(range(len(batch))),
            "voice_ids": [item.params.voice_id for item in batch],
            "owners": [item.params.owner for item in batch],
            "lease_ids": [item.lease_id for item in batch],
            "holders": [bounded(item.params.holder) for item in batch],
            "expires": [naive_utc(item.now + item.params.lease_ttl) for item in batch],
            "now": naive_utc(max(item.now for item in batch)),
        }
        for attempt in (1, 2):
            try:
                async with self._engine.connect() as conn:
                    return [row._mapping for row in await conn.execute(_PG_LEASE_BATCH, params)]
            except DBAPIError as exc:
                deadlock = getattr(exc.orig, "sqlstate", None) == "40P01"
                if attempt == 2 or not (exc.connection_invalidated or deadlock):
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _outcome(item: _PendingLease, m: Any) -> ReadyOutcome:
        values = dict(m)
        for name in _VOICE_TIMES:
            if values[name] is not None:
                values[name] = values[name].replace(tzinfo=UTC)
        voice = AllocatorRepository._voice_from(values, int(values["active"]))
        p = item.params
        return ReadyOutcome(
            voice, Lease(item.lease_id, p.voice_id, p.holder, item.now + p.lease_ttl)
        )


def owner_lock_key(owner: str) -> int:
    """A stable signed 64-bit advisory-lock key for a user (Python's ``hash`` is salted
    per process; replicas must agree)."""
    digest = hashlib.blake2b(f"voiceslot.allocator.owner:{owner}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def estimate_wait_s(position: int, capacity: int, mean_allocation_s: float) -> float:
    """Rough wait for the ``position``-th request in line: slots turn over in waves of
    ``capacity`` allocations, each taking about ``mean_allocation_s``."""
    waves = (position + max(1, capacity) - 1) // max(1, capacity)
    return waves * mean_allocation_s


def _in_flight_claim(req: AllocationRequestRow, voice: VoiceRow) -> Claim:
    """The claim of an allocation already in flight, as its dispatcher holds it."""
    return Claim(
        req.id,
        voice.id,
        voice.provider,
        voice.generation,
        req.lease_token or "",
        req.attempts,
        voice.sample_key,
        voice.language,
    )
