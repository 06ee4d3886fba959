"""All of the synthesizer's SQL: batch jobs and their items.

Workers on any replica claim items with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL; SQLite
serializes writers with ``BEGIN IMMEDIATE``), each claim carrying a token and an expiry.
An item whose worker died is claimable again once its lease expires. Every item outcome
is fenced by its token and bumps the job's counters in the same transaction, so progress
is exact even when a presumed-dead worker finishes late.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from synth_svc.domain.batch import Counts, ItemState, JobState, job_state_after
from synth_svc.models import BatchItemRow, BatchJobRow
from voiceslot.db import advisory_lock_key
from voiceslot.errors import NotFound, QuotaExceeded, QuotaViolation, bounded
from voiceslot.ids import new_id


@dataclass(frozen=True)
class Job:
    id: str
    owner: str
    voice_id: str
    state: JobState
    encoding: str
    sample_rate: int
    counts: Counts
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class Item:
    id: str
    job_id: str
    name: str
    state: ItemState
    attempts: int
    error: str
    audio_key: str | None
    audio_seconds: float


@dataclass(frozen=True)
class ClaimedItem:
    id: str
    job_id: str
    voice_id: str
    owner: str
    text: str
    encoding: str
    sample_rate: int
    attempts: int
    token: str


def _job(row: BatchJobRow) -> Job:
    return Job(
        id=row.id,
        owner=row.owner,
        voice_id=row.voice_id,
        state=JobState(row.state),
        encoding=row.encoding,
        sample_rate=row.sample_rate,
        counts=Counts(row.total_items, row.succeeded_items, row.failed_items),
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


def _item(row: BatchItemRow) -> Item:
    return Item(
        row.id,
        row.job_id,
        row.name,
        ItemState(row.state),
        row.attempts,
        row.error,
        row.audio_key,
        row.audio_seconds,
    )


class JobRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def create_job(
        self,
        *,
        owner: str,
        voice_id: str,
        items: list[tuple[str, str]],
        encoding: str,
        sample_rate: int,
        idempotency_key: str | None,
        now: datetime,
        max_unfinished: int | None = None,
    ) -> tuple[Job, bool]:
        """Insert a job and its items in one transaction; (job, created). With
        ``max_unfinished``, refuse (QuotaExceeded) an owner who already has that many
        jobs pending or running; checked under a per-owner lock on PostgreSQL (SQLite's
        transactions are serialized anyway), so concurrent creates cannot both pass."""
        job_id = new_id("job")
        try:
            async with self._sessions.begin() as s:
                if max_unfinished is not None:
                    await self._check_unfinished(s, owner, max_unfinished)
                s.add(
                    BatchJobRow(
                        id=job_id,
                        owner=owner,
                        voice_id=voice_id,
                        state=JobState.PENDING.value,
                        encoding=encoding,
                        sample_rate=sample_rate,
                        total_items=len(items),
                        succeeded_items=0,
                        failed_items=0,
                        idempotency_key=idempotency_key,
                        created_at=now,
                        updated_at=now,
                    )
                )
                await s.flush()
                s.add_all(
                    BatchItemRow(
                        id=new_id("it"),
                        job_id=job_id,
                        position=i,
                        name=name,
                        text=text,
                        state=ItemState.PENDING.value,
                        attempts=0,
                        run_at=now,
                        error="",
                        audio_seconds=0.0,
                        updated_at=now,
                    )
                    for i, (name, text) in enumerate(items)
                )
        except IntegrityError:
            if idempotency_key is None:
                raise
            async with self._sessions() as s:
                row = (
                    await s.execute(
                        select(BatchJobRow).where(
                            BatchJobRow.owner == owner,
                            BatchJobRow.idempotency_key == idempotency_key,
                        )
                    )
                ).scalar_one()
                return _job(row), False
        return await self.get_job(job_id, owner=None), True

    @staticmethod
    async def _check_unfinished(s: AsyncSession, owner: str, cap: int) -> None:
        if s.get_bind().dialect.name == "postgresql":
            key = advisory_lock_key(f"voiceslot.synth.jobs:{owner}")
            await s.execute(select(func.pg_advisory_xact_lock(key)))
        unfinished = (
            await s.execute(
                select(func.count()).where(
                    BatchJobRow.owner == owner,
                    BatchJobRow.state.in_((JobState.PENDING.value, JobState.RUNNING.value)),
                )
            )
        ).scalar_one()
        if unfinished >= cap:
            raise QuotaExceeded(
                f"{unfinished} batch jobs of yours are still pending or running; the limit "
                f"is {cap}: wait for one to finish or cancel one",
                violations=(QuotaViolation(f"user:{owner}", f"{cap} unfinished batch jobs"),),
            )

    async def find_by_idempotency_key(self, owner: str, key: str) -> Job | None:
        async with self._sessions() as s:
            row = (
                await s.execute(
                    select(BatchJobRow).where(
                        BatchJobRow.owner == owner, BatchJobRow.idempotency_key == key
                    )
                )
            ).scalar_one_or_none()
            return None if row is None else _job(row)

    async def get_job(self, job_id: str, *, owner: str | None) -> Job:
        async with self._sessions() as s:
            row = await s.get(BatchJobRow, job_id)
            if row is None or (owner is not None and row.owner != owner):
                raise NotFound("batch job", job_id)
            return _job(row)

    async def list_items(self, job_id: str) -> list[Item]:
        async with self._sessions() as s:
            rows = (
                (
                    await s.execute(
                        select(BatchItemRow)
                        .where(BatchItemRow.job_id == job_id)
                        .order_by(BatchItemRow.position)
                    )
                )
                .scalars()
                .all()
            )
            return [_item(r) for r in rows]

    async def get_item(self, job_id: str, item_id: str) -> Item:
        async with self._sessions() as s:
            row = await s.get(BatchItemRow, item_id)
            if row is None or row.job_id != job_id:
                raise NotFound("batch item", item_id)
            return _item(row)

    async def list_jobs(
        self, *, owner: str | None, after: tuple[datetime, str] | None, limit: int
    ) -> list[Job]:
        async with self._sessions() as s:
            q = select(BatchJobRow)
            if owner is not None:
                q = q.where(BatchJobRow.owner == owner)
            if after is not None:
                at, jid = after
                q = q.where(
                    or_(
                        BatchJobRow.created_at < at,
                        and_(BatchJobRow.created_at == at, BatchJobRow.id < jid),
                    )
                )
            q = q.order_by(BatchJobRow.created_at.desc(), BatchJobRow.id.desc()).limit(limit)
            return [_job(r) for r in (await s.execute(q)).scalars().all()]

    async def cancel_job(self, job_id: str, *, owner: str | None, now: datetime) -> Job:
        """Pending items become cancelled; items in flight finish. No-op once finished."""
        async with self._sessions.begin() as s:
            row = await s.get(BatchJobRow, job_id, with_for_update=True)
            if row is None or (owner is not None and row.owner != owner):
                raise NotFound("batch job", job_id)
            if row.state in (JobState.PENDING.value, JobState.RUNNING.value):
                await s.execute(
                    update(BatchItemRow)
                    .where(
                        BatchItemRow.job_id == job_id, BatchItemRow.state == ItemState.PENDING.value
                    )
                    .values(state=ItemState.CANCELLED.value, updated_at=now)
                )
                row.state, row.updated_at, row.finished_at = JobState.CANCELLED.value, now, now
            return _job(row)

    async def claim(
        self, *, now: datetime, limit: int, lease: timedelta, holder: str = ""
    ) -> list[ClaimedItem]:
        """Up to ``limit`` due items: pending ones, and running ones whose worker's lease
        expired (the worker died). Oldest jobs first, items in order.

        The claiming transaction locks item rows only (``SKIP LOCKED``: replicas never wait
        on each other's claims). Jobs are marked running in a second, conditional update:
        taking a job row lock while holding item locks would order locks opposite to
        ``finish`` and ``cancel_job`` (job, then items) and could deadlock with them."""
        async with self._sessions.begin() as s:
            due = or_(
                and_(BatchItemRow.state == ItemState.PENDING.value, BatchItemRow.run_at <= now),
                and_(
                    BatchItemRow.state == ItemState.RUNNING.value,
                    BatchItemRow.lease_expires_at <= now,
                ),
            )
            q = (
                select(BatchItemRow, BatchJobRow.voice_id, BatchJobRow.owner)
                .add_columns(BatchJobRow.encoding, BatchJobRow.sample_rate, BatchJobRow.state)
                .join(BatchJobRow, BatchJobRow.id == BatchItemRow.job_id)
                .where(due, BatchJobRow.state.in_((JobState.PENDING.value, JobState.RUNNING.value)))
                .order_by(BatchJobRow.created_at, BatchItemRow.position)
                .limit(limit)
                .with_for_update(skip_locked=True, of=BatchItemRow)
            )
            claimed = []
            pending_jobs = set()
            for item, voice_id, owner, encoding, sample_rate, job_state in (
                await s.execute(q)
            ).all():
                token = uuid.uuid4().hex
                item.state, item.lease_token = ItemState.RUNNING.value, token
                item.lease_expires_at, item.updated_at = now + lease, now
                item.claimed_by = holder or None
                item.attempts += 1
                if job_state == JobState.PENDING.value:
                    pending_jobs.add(item.job_id)
                claimed.append(
                    ClaimedItem(
                        item.id,
                        item.job_id,
                        voice_id,
                        owner,
                        item.text,
                        encoding,
                        sample_rate,
                        item.attempts,
                        token,
                    )
                )
        if pending_jobs:
            async with self._sessions.begin() as s:
                await s.execute(
                    update(BatchJobRow)
                    .where(
                        BatchJobRow.id.in_(sorted(pending_jobs)),
                        BatchJobRow.state == JobState.PENDING.value,
                    )
                    .values(state=JobState.RUNNING.value, updated_at=now)
                )
        return claimed

    async def hand_back(self, claim: ClaimedItem, *, now: datetime) -> bool:
        """Return an item whose worker is stopping to the queue at once, without counting
        the attempt (the stop was not the item's fault); in a job cancelled meanwhile the
        item is cancelled instead. Fenced by the claim's token: False if it was already
        taken over. Locks job then item, like ``finish``."""
        async with self._sessions.begin() as s:
            locked = await _lock_claimed(s, claim)
            if locked is None:
                return False
            job, item = locked
            cancelled = job.state == JobState.CANCELLED.value
            item.state = ItemState.CANCELLED.value if cancelled else ItemState.PENDING.value
            item.lease_token, item.lease_expires_at = None, None
            item.run_at, item.updated_at = now, now
            item.attempts = max(0, item.attempts - 1)
            return True

    async def extend(self, item_id: str, token: str, *, until: datetime) -> bool:
        async with self._sessions.begin() as s:
            result = await s.execute(
                update(BatchItemRow)
                .where(
                    BatchItemRow.id == item_id,
                    BatchItemRow.lease_token == token,
                    BatchItemRow.state == ItemState.RUNNING.value,
                )
                .values(lease_expires_at=until)
            )
            return result.rowcount == 1

    async def finish(
        self,
        claim: ClaimedItem,
        *,
        now: datetime,
        outcome: ItemState,
        error: str = "",
        audio_key: str | None = None,
        audio_seconds: float = 0.0,
        retry_at: datetime | None = None,
    ) -> bool:
        """Record an item's outcome (SUCCEEDED, FAILED, or PENDING again at ``retry_at``),
        fenced by the claim's token. False if the claim was taken over meanwhile."""
        async with self._sessions.begin() as s:
            locked = await _lock_claimed(s, claim)
            if locked is None:
                return False
            job, item = locked
            item.lease_token, item.lease_expires_at, item.updated_at = None, None, now
            item.error = bounded(error)
            if outcome == ItemState.PENDING:
                # A cancelled job does not retry: the item is cancelled instead.
                cancelled = job.state == JobState.CANCELLED.value
                item.state = ItemState.CANCELLED.value if cancelled else ItemState.PENDING.value
                item.run_at = retry_at or now
                return True
            item.state = outcome.value
            if outcome == ItemState.SUCCEEDED:
                item.audio_key, item.audio_seconds = audio_key, audio_seconds
                job.succeeded_items += 1
            else:
                job.failed_items += 1
            counts = Counts(job.total_items, job.succeeded_items, job.failed_items)
            state = job_state_after(JobState(job.state), counts)
            if state != JobState(job.state):
                job.state, job.finished_at = state.value, now
            job.updated_at = now
            return True


async def _lock_claimed(
    s: AsyncSession, claim: ClaimedItem
) -> tuple[BatchJobRow, BatchItemRow] | None:
    """Lock the claim's job, then its item (always in that order, like cancel_job), or None
    if the claim was taken over meanwhile: the fence every item outcome goes through."""
    job = await s.get(BatchJobRow, claim.job_id, with_for_update=True)
    item = await s.get(BatchItemRow, claim.id, with_for_update=True)
    if (
        job is None
        or item is None
        or item.lease_token != claim.token
        or item.state != ItemState.RUNNING.value
    ):
        return None
    return job, item
