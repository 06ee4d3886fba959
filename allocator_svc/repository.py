"""All of the allocator's SQL, one transaction per method.

Every state change is a fenced UPDATE (``WHERE state = expected [AND token = …]``) in a
transaction of its own; provider calls happen between these transactions, never inside
one. On PostgreSQL rows are locked with ``FOR UPDATE`` (the provider row with ``SKIP
LOCKED`` so a replica never waits for another's dispatch); on SQLite every transaction
is ``BEGIN IMMEDIATE`` (see ``voiceslot.db``), which serializes writers.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

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
from voiceslot.errors import (
    FailedPrecondition,
    NotFound,
    QuotaExceeded,
    QuotaViolation,
    bounded,
)

S = VoiceState
_HOLDING = [s.value for s in SLOT_HOLDING]


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


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
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

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
        """Make the provider rows match configuration (name, kind, capacity)."""
        async with self._sessions.begin() as s:
            for name, kind, capacity in providers:
                row = await s.get(ProviderRow, name, with_for_update=True)
                if row is None:
                    s.add(
                        ProviderRow(
                            name=name,
                            kind=kind,
                            capacity=capacity,
                            updated_at=now,
                            breaker_state="closed",
                            breaker_failures=0,
                            tokens=0.0,
                        )
                    )
                else:
                    row.kind, row.capacity, row.updated_at = kind, capacity, now

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

    async def delete_voice(
        self, voice_id: str, now: datetime, *, owner: str | None, force: bool
    ) -> Voice:
        """Remove the row (events stay). The caller then deletes the remote copy and the
        sample; if that fails, reconciliation finds the remote orphan by its label."""
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
            await s.delete(row)
            self._event(s, voice_id, EventReason.DELETED, now, before=state)
            return voice

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
        async with self._sessions.begin() as s:
            row = await self._lock_voice(s, p.voice_id, p.owner)
            state = VoiceState(row.state)
            if state == S.READY:
                lease = LeaseRow(
                    id=new_id("ls"),
                    voice_id=row.id,
                    owner=row.owner,
                    holder=p.holder,
                    expires_at=now + p.lease_ttl,
                    created_at=now,
                )
                s.add(lease)
                row.last_used_at = now
                self._event(s, row.id, EventReason.LEASED, now, message=p.holder)
                await s.flush()
                voice = self._record(row, await self._active_leases(s, row.id, now))
                return ReadyOutcome(voice, Lease(lease.id, row.id, lease.holder, lease.expires_at))
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

    async def _check_user_cap(self, s: AsyncSession, owner: str, cap: int) -> None:
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

    async def release_lease(self, lease_id: str, now: datetime, *, owner: str | None) -> None:
        async with self._sessions.begin() as s:
            lease = await s.get(LeaseRow, lease_id, with_for_update=True)
            if lease is None or (owner is not None and lease.owner != owner):
                return
            await s.delete(lease)
            await s.execute(
                update(VoiceRow).where(VoiceRow.id == lease.voice_id).values(last_used_at=now)
            )
            self._event(s, lease.voice_id, EventReason.LEASE_RELEASED, now, message=lease.holder)

    async def expire_leases(self, now: datetime) -> list[str]:
        async with self._sessions.begin() as s:
            rows = (
                (await s.execute(select(LeaseRow).where(LeaseRow.expires_at <= now)))
                .scalars()
                .all()
            )
            for lease in rows:
                self._event(s, lease.voice_id, EventReason.LEASE_EXPIRED, now, message=lease.holder)
            await s.execute(delete(LeaseRow).where(LeaseRow.id.in_([r.id for r in rows])))
            return sorted({r.voice_id for r in rows})

    # -- dispatch ---------------------------------------------------------------------------

    async def claim(
        self,
        provider: str,
        now: datetime,
        *,
        limit: int,
        allocation_timeout: timedelta,
        reclaim_policy: ReclaimPolicy,
    ) -> ClaimResult:
        """Take due requests for ``provider`` up to its free capacity, fairly across users,
        and pick reclaim victims if it is full with requests waiting.

        Capacity is decided under the provider row's lock and only this method moves voices
        into slot-holding states, so concurrent dispatchers can never overshoot it.
        """
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
            if (
                prov.breaker_state == "open"
                and prov.breaker_open_until
                and prov.breaker_open_until > now
            ):
                return ClaimResult([], [])
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
            claims: list[Claim] = []
            if free and backlog:
                for req_id in await self._fair_order(s, provider, now, min(free, limit)):
                    claim = await self._claim_one(s, req_id, now, allocation_timeout)
                    if claim is not None:
                        claims.append(claim)
            reclaims: list[ReclaimTarget] = []
            waiting = backlog - len(claims)
            if waiting > 0 and free - len(claims) <= 0:
                reclaims = await self._pick_reclaims(s, prov, waiting, now, reclaim_policy)
            return ClaimResult(claims, reclaims)

    async def _fair_order(self, s: AsyncSession, provider: str, now: datetime, n: int) -> list[int]:
        """Round robin across users: every user's best request (priority, then age) comes
        before anyone's second; among users, those holding fewer slots here go first."""
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
        q = (
            select(ranked.c.id)
            .outerjoin(held, held.c.owner == ranked.c.owner)
            .order_by(ranked.c.rank, func.coalesce(held.c.held, 0), ranked.c.id)
            .limit(n)
        )
        return list((await s.execute(q)).scalars().all())

    async def _claim_one(
        self, s: AsyncSession, req_id: int, now: datetime, allocation_timeout: timedelta
    ) -> Claim | None:
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
        return Claim(
            request_id=req.id,
            voice_id=voice.id,
            provider=voice.provider,
            generation=voice.generation,
            token=token,
            attempts=req.attempts,
            sample_key=voice.sample_key,
            language=voice.language,
        )

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
        for voice_id in policy.choose(candidates, pressure, now=now):
            row = by_id[voice_id]
            await s.refresh(row, with_for_update=True)
            if row.state != S.READY.value or not row.provider_voice_id:
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
        deleted meanwhile, and the remote voice just made belongs to nobody."""
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
            reason = EventReason.ADOPTED if adopted else EventReason.CLONED
            self._transition(s, voice, S.READY, reason, now, message=provider_voice_id)
            await s.execute(
                update(AllocationRequestRow)
                .where(AllocationRequestRow.id == claim.request_id)
                .values(state="done", lease_token=None, updated_at=now)
            )
            return True

    async def fail_allocation(
        self, claim: Claim, error: str, now: datetime, *, retry_at: datetime | None
    ) -> VoiceState | None:
        """Back to the queue at ``retry_at``, or dead-lettered when it is None. Returns the
        voice's new state, or None if the claim was fenced off."""
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
            self._transition(s, voice, S.QUEUED, EventReason.ALLOCATION_RETRY, now, message=error)
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
            if row is None or row.state != S.RECLAIMING.value:
                return
            if deleted:
                row.provider_voice_id = None
                self._transition(s, row, S.IDLE, target.reason, now)
            else:
                row.last_error = bounded(error)
                self._transition(
                    s, row, S.READY, target.reason, now, message=f"reclaim failed: {error}"
                )

    # -- maintenance ------------------------------------------------------------------------

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
            return [
                Claim(
                    req.id,
                    v.id,
                    v.provider,
                    v.generation,
                    req.lease_token or "",
                    req.attempts,
                    v.sample_key,
                    v.language,
                )
                for req, v in (await s.execute(q)).all()
            ]

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
            return Claim(
                req.id,
                v.id,
                v.provider,
                v.generation,
                req.lease_token or "",
                req.attempts,
                v.sample_key,
                v.language,
            )

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


def estimate_wait_s(position: int, capacity: int, mean_allocation_s: float) -> float:
    """Rough wait for the ``position``-th request in line: slots turn over in waves of
    ``capacity`` allocations, each taking about ``mean_allocation_s``."""
    waves = (position + max(1, capacity) - 1) // max(1, capacity)
    return waves * mean_allocation_s
