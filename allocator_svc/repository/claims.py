"""Dispatch: claiming queued requests under the provider row's lock (capacity, breaker,
token bucket), and ending a claimed allocation: complete, fail (retry or dead-letter), or
find it stuck.

The voice moves with its request (QUEUED → ALLOCATING → READY / QUEUED / FAILED), in the
same transaction, fenced by the claim's token.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from allocator_svc.domain.breaker import BreakerPolicy, BreakerState
from allocator_svc.domain.reclaim import ReclaimPolicy
from allocator_svc.domain.states import (
    EventReason,
    LateCopy,
    VoiceSeen,
    VoiceState,
    check_transition,
    late_copy_fate,
)
from allocator_svc.models import (
    AllocationRequestRow,
    AllocationTurnRow,
    ProviderRow,
    QueueStandingRow,
    VoiceRow,
)
from allocator_svc.records import (
    Claim,
    ReclaimTarget,
)
from allocator_svc.repository._base import S, transition
from allocator_svc.repository.claim_sql import CLAIM
from allocator_svc.repository.completion import COMPLETE, CompletionBatcher
from allocator_svc.repository.providers import breaker_of
from allocator_svc.repository.queue import QueueRepository
from allocator_svc.repository.slots import SlotsRepository
from voiceslot.errors import FailedPrecondition, NotFound, bounded
from voiceslot.token_bucket import Bucket, TokenBucket


@dataclass(frozen=True)
class ClaimResult:
    claims: list[Claim]
    reclaims: list[ReclaimTarget]


def in_flight_claim(req: AllocationRequestRow, voice: VoiceRow) -> Claim:
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


def lease_ran_out(req: AllocationRequestRow, by: datetime | None) -> bool:
    """Whether a request's dispatch lease had expired by ``by`` (None: no fence)."""
    return by is None or (req.lease_expires_at is not None and req.lease_expires_at <= by)


class ClaimsRepository(QueueRepository, SlotsRepository):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._completions = CompletionBatcher(self._hot) if self._hot is not None else None

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
        if not await self.anything_due(provider, now):
            # Nothing to claim and no one to reclaim for: the round most polls find
            # (every ``dispatch_interval_s`` on every replica) costs one index probe, not
            # a transaction under the provider's lock.
            return ClaimResult([], [])
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
            state = breaker_of(prov)
            after, admitted = breaker.admit(state, now)
            if admitted == 0:
                return ClaimResult([], [])  # open: no clones, and no reclaims for them
            free = max(0, prov.capacity - await self._slots_held(s, provider))
            tokens = Bucket(prov.tokens, prov.tokens_at)
            may_start = min(free, limit, bucket.available(tokens, now))
            if admitted is not None:
                may_start = min(may_start, admitted)
            claims: list[Claim] = []
            if may_start:
                wanted = [
                    (req_id, uuid.uuid4().hex)
                    for req_id in await self._fair_order(s, provider, now, may_start)
                ]
                taken = await CLAIM.take(
                    await s.connection(), wanted, now, now + allocation_timeout
                )
                claims = [claim for claim, _ in taken]
                if taken:
                    owners = sorted({owner for _, owner in taken})
                    await self._take_turns(s, provider, owners, now)
            if claims:
                spent = bucket.spend(tokens, len(claims), now)
                prov.tokens, prov.tokens_at = spent.tokens, spent.at
                if breaker.probe_started(after, len(claims)):
                    prov.breaker_state = after.state.value
                    prov.breaker_open_until = after.open_until
                prov.updated_at = now
            reclaims: list[ReclaimTarget] = []
            if free - len(claims) <= 0 and state.state == BreakerState.CLOSED:
                # Only a full account weighs reclaims for the requests still waiting
                # (counted after this round's claims, which this transaction sees): a
                # round with slots left is spared the pass over every waiting user.
                waiting = await self._backlog(s, provider, now)
                if waiting > 0:
                    reclaims = await self._plan_reclaims(
                        s,
                        prov,
                        now,
                        reclaim_policy,
                        EventReason.RECLAIMED_FOR_BACKLOG,
                        waiting=waiting,
                        free=max(0, free - len(claims)),
                    )
            return ClaimResult(claims, reclaims)

    async def reclaim_idle(
        self, provider: str, now: datetime, *, idle_since: datetime, policy: ReclaimPolicy
    ) -> list[ReclaimTarget]:
        """Voices unused since ``idle_since`` to reclaim for requests waiting at
        ``provider``: the same decision as a claim round's (``_plan_reclaims``), under the
        same lock, only with the idle voices as candidates."""
        async with self._sessions.begin() as s:
            prov = await s.get(ProviderRow, provider, with_for_update=True)
            if prov is None or breaker_of(prov).state != BreakerState.CLOSED:
                return []  # no clones may start: a slot freed now would serve nobody
            waiting = await self._backlog(s, provider, now)
            if waiting == 0:
                return []
            free = max(0, prov.capacity - await self._slots_held(s, provider))
            return await self._plan_reclaims(
                s,
                prov,
                now,
                policy,
                EventReason.RECLAIMED_IDLE,
                waiting=waiting,
                free=free,
                idle_since=idle_since,
            )

    @staticmethod
    async def _slots_held(s: AsyncSession, provider: str) -> int:
        """Slots ``provider``'s voices occupy now (see ``SLOT_HOLDING``), read from the
        ``queue_standing`` aggregate (kept exact by triggers in the same transactions
        that move voices) instead of counting every holding voice, which cost a pass
        over tens of thousands of index entries per round on a large account."""
        q = QueueStandingRow
        held = select(func.coalesce(func.sum(q.held), 0)).where(q.provider == provider)
        return int((await s.execute(held)).scalar_one())

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

    async def complete_allocation(
        self,
        claim: Claim,
        provider_voice_id: str,
        now: datetime,
        *,
        adopted: bool,
        lease_expired_by: datetime | None = None,
        clone_seconds: float | None = None,
    ) -> bool:
        """READY, fenced by the claim's token (and, for a reset acting on someone else's
        claim, by its dispatch lease having expired by ``lease_expired_by``). False: the
        allocation was reset, the voice deleted, or its dispatcher still holds it; see
        ``late_copy_fate`` for what becomes of the remote voice. ``clone_seconds``: how
        long the allocation took, for the provider's measured mean."""
        check_transition(S.ALLOCATING, S.READY)
        completion = {
            "voice_id": claim.voice_id,
            "token": claim.token,
            "remote": provider_voice_id,
            "message": bounded(provider_voice_id),
            "reason": (EventReason.ADOPTED if adopted else EventReason.CLONED).value,
            "request_id": claim.request_id,
            "fence": lease_expired_by,
            "provider": claim.provider,
            "seconds": clone_seconds,
            "now": now,
        }
        if self._completions is not None:  # one statement for all completing together
            return await self._completions.complete(completion)
        async with self._engine.begin() as conn:
            return await COMPLETE.run_one(conn, completion)

    async def fail_allocation(
        self,
        claim: Claim,
        error: str,
        now: datetime,
        *,
        retry_at: datetime | None,
        reason: EventReason = EventReason.ALLOCATION_RETRY,
        lease_expired_by: datetime | None = None,
    ) -> VoiceState | None:
        """Back to the queue at ``retry_at`` (recorded with ``reason``), or dead-lettered when
        it is None. Returns the voice's new state, or None if the claim was fenced off (by
        its token, or with ``lease_expired_by`` by a dispatch lease still running)."""
        async with self._sessions.begin() as s:
            voice = await s.get(VoiceRow, claim.voice_id, with_for_update=True)
            req = await s.get(AllocationRequestRow, claim.request_id, with_for_update=True)
            if (
                voice is None
                or req is None
                or voice.state != S.ALLOCATING.value
                or voice.allocation_token != claim.token
                or not lease_ran_out(req, lease_expired_by)
            ):
                return None
            voice.allocation_token = None
            voice.last_error = bounded(error)
            req.last_error = bounded(error)
            req.lease_token, req.lease_expires_at, req.updated_at = None, None, now
            if retry_at is None:
                req.state = "dead"
                transition(s, voice, S.FAILED, EventReason.DEAD_LETTERED, now, message=error)
                return S.FAILED
            req.state, req.run_at = "queued", retry_at
            transition(s, voice, S.QUEUED, reason, now, message=error)
            return S.QUEUED

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
            return [in_flight_claim(req, v) for req, v in (await s.execute(q)).all()]

    async def claim_for_voice(self, voice_id: str, now: datetime) -> Claim:
        """The in-flight allocation of a voice, for an admin's stuck reset: only once its
        dispatch lease has expired (FAILED_PRECONDITION before), since until then its
        dispatcher may still complete it, and a reset would race it for the remote copy."""
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
            if not lease_ran_out(req, now):
                raise FailedPrecondition(
                    f"voice {voice_id} is allocating under a live dispatch lease (until "
                    f"{req.lease_expires_at.isoformat() if req.lease_expires_at else '?'}); "
                    "it is stuck only once that lease has expired"
                )
            return in_flight_claim(req, v)

    async def extend_claim(self, claim: Claim, until: datetime, now: datetime) -> bool:
        """Keep an allocation in flight until ``until`` (its dispatcher waits for a clone
        whose answer was lost to show up). False: fenced off meanwhile."""
        async with self._sessions.begin() as s:
            result = await s.execute(
                update(AllocationRequestRow)
                .where(
                    AllocationRequestRow.id == claim.request_id,
                    AllocationRequestRow.state == "leased",
                    AllocationRequestRow.lease_token == claim.token,
                )
                .values(lease_expires_at=until, updated_at=now)
            )
            return bool(result.rowcount)

    async def late_copy_fate(self, claim: Claim, provider_voice_id: str) -> LateCopy:
        """Whether a remote voice made under a claim that was fenced off may be deleted
        (see ``domain.states.late_copy_fate``). Read under the voice's lock, so that
        no claim or completion changes the answer meanwhile."""
        async with self._sessions.begin() as s:
            v = await s.get(VoiceRow, claim.voice_id, with_for_update=True)
            if v is None:
                return late_copy_fate(None, claim.generation, provider_voice_id)
            # The claim is over: its request no longer keeps a dispatch lease (a deletion
            # waiting for this allocation to end may go on).
            await s.execute(
                update(AllocationRequestRow)
                .where(
                    AllocationRequestRow.id == claim.request_id,
                    AllocationRequestRow.state == "leased",
                    AllocationRequestRow.lease_token == claim.token,
                )
                .values(state="dead", lease_token=None, lease_expires_at=None)
            )
            seen = VoiceSeen(VoiceState(v.state), v.generation, v.provider_voice_id)
            return late_copy_fate(seen, claim.generation, provider_voice_id)
