"""Slots: freeing them (reclaim: READY → RECLAIMING → IDLE once the remote copy is
deleted) and checking them against the provider (reconciliation).

A slot stays counted while the voice is RECLAIMING: the remote copy still occupies it
at the provider until the delete is confirmed.

The reclaim policy is fed what the allocator knows: each READY voice's leases, pin and
use statistics (``domain.usage``, kept in the voices table by ``usage_touch`` in the
lease grant), the provider's statistics summed over its voices, the backlog and when its
oldest request came, and the add/edit budget left.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Float, and_, case, cast, func, literal, or_, select, union
from sqlalchemy.ext.asyncio import AsyncSession

from allocator_svc.domain.reclaim import ProviderPressure, ReclaimPolicy, SlotCandidate
from allocator_svc.domain.states import EventReason, VoiceSeen, VoiceState
from allocator_svc.domain.usage import (
    HALF_LIFE_S,
    SESSION_GAP_S,
    TAU_S,
    SessionShape,
    VoiceUsage,
)
from allocator_svc.models import AllocationRequestRow, ProviderRow, VoiceRow
from allocator_svc.records import ReclaimTarget, Voice
from allocator_svc.repository._base import RepositoryBase, S, active_leases, record, transition
from voiceslot.errors import FailedPrecondition, bounded


def last_used(v: type[VoiceRow]) -> Any:
    """When a voice was last used: its last lease, else when it became what it is."""
    return func.coalesce(v.last_used_at, v.state_changed_at)


def _seconds_since(now: Any, then: Any, *, postgres: bool) -> ColumnElement[float]:
    if postgres:
        return cast(func.extract("epoch", now - then), Float)
    return (func.julianday(now) - func.julianday(then)) * 86400.0


def usage_touch(now: Any, *, postgres: bool) -> dict[str, ColumnElement[Any]]:
    """``domain.usage.observe`` as SET expressions of the UPDATE that grants a lease
    (``repository.leases``): every right-hand side reads the row's previous values, so
    the statistics move in the same statement, no read first. ``now`` is the grant's
    time parameter."""
    v = VoiceRow
    dt = _seconds_since(now, v.use_at, postgres=postgres)
    gap = case((dt > 0, dt), else_=literal(0.0))
    first = or_(v.use_requests == 0, v.use_at.is_(None))
    cont = and_(~first, gap < SESSION_GAP_S)
    before = v.use_freq * func.power(0.5, gap / HALF_LIFE_S)
    age = _seconds_since(now, v.created_at, postgres=postgres)
    span = TAU_S * (1.0 - func.exp(-case((age > 0, age), else_=literal(0.0)) / TAU_S))
    span = case((span > 1.0, span), else_=literal(1.0))
    start_continued = -func.exp(-before / span * SESSION_GAP_S) + 1.0
    return {
        "use_at": now,
        "use_freq": case((first, literal(1.0)), else_=before + 1.0),
        "use_requests": v.use_requests + 1,
        "use_continued": v.use_continued + case((cont, 1), else_=0),
        "use_burst": case((cont, v.use_burst + 1), else_=1),
        "use_sessions": v.use_sessions + case((and_(cont, v.use_burst == 1), 1), else_=0),
        "use_gap_sum": v.use_gap_sum + case((cont, gap), else_=literal(0.0)),
        "use_expected": v.use_expected
        + case((or_(first, cont), literal(0.0)), else_=start_continued),
    }


def usage_of(r: VoiceRow) -> VoiceUsage:
    return VoiceUsage(
        r.use_freq,
        r.use_requests,
        r.use_continued,
        r.use_burst,
        r.use_sessions,
        r.use_expected,
        r.use_gap_sum,
    )


RECLAIM_CANDIDATES = 512
"""Voices a reclaim decision weighs at most, by each of two orders (see below)."""


def _reclaim_candidates(provider: str, now: datetime, idle_since: datetime | None) -> Any:
    """The READY voices a reclaim decision weighs: never a pinned or leased one (no
    policy may evict those), and on a large account not every one of the rest. Reading
    them all cost a second per dispatch round at 50,000 voices, under the provider's
    lock. The ``RECLAIM_CANDIDATES`` least recently used and the as many least often
    used (decayed request count) are the ones any policy here evicts first; a decision
    needing more evictions than that takes the rest in the next round."""
    v = VoiceRow
    usable = [
        v.provider == provider,
        v.state == S.READY.value,
        v.pinned.is_(False),
        active_leases(v.id, now) == 0,
    ]
    if idle_since is not None:
        usable.append(last_used(v) <= idle_since)
    least_recent = select(v.id).where(*usable).order_by(last_used(v), v.id)
    least_often = select(v.id).where(*usable).order_by(v.use_freq, v.id)
    # Each order limited in its own subquery: SQLite takes no ORDER BY inside a UNION.
    first = [q.limit(RECLAIM_CANDIDATES).subquery() for q in (least_recent, least_often)]
    ids = union(*(select(f.c.id) for f in first)).subquery()
    return select(v).where(v.id.in_(select(ids.c.id)))


class SlotsRepository(RepositoryBase):
    async def _session_shape(self, s: AsyncSession, provider: str) -> SessionShape:
        """The provider's voices' use statistics summed (one aggregate query)."""
        v = VoiceRow
        row = (
            await s.execute(
                select(
                    func.coalesce(func.sum(v.use_requests - v.use_continued), 0),
                    func.coalesce(func.sum(v.use_sessions), 0),
                    func.coalesce(func.sum(v.use_expected), 0.0),
                    func.coalesce(func.sum(v.use_gap_sum), 0.0),
                    func.coalesce(func.sum(v.use_continued), 0),
                    func.min(v.created_at),
                ).where(v.provider == provider)
            )
        ).one()
        since: datetime | None = row[5]
        return SessionShape(
            float(row[0]),
            float(row[1]),
            float(row[2]),
            float(row[3]),
            float(row[4]),
            since.timestamp() if since is not None else None,
        )

    async def _oldest_waiting(
        self, s: AsyncSession, provider: str, now: datetime
    ) -> datetime | None:
        """When the longest-waiting due request at ``provider`` came."""
        r = AllocationRequestRow
        return (
            await s.execute(
                select(func.min(r.created_at)).where(
                    r.provider == provider, r.state == "queued", r.run_at <= now
                )
            )
        ).scalar_one_or_none()

    async def _plan_reclaims(
        self,
        s: AsyncSession,
        prov: ProviderRow,
        now: datetime,
        policy: ReclaimPolicy,
        reason: EventReason,
        *,
        waiting: int,
        free: int,
        idle_since: datetime | None = None,
    ) -> list[ReclaimTarget]:
        """The one reclaim decision (backlog and idle alike), made under the provider
        row's lock so that two deciders cannot both evict for the same waiting request:
        pick victims with ``policy`` among the READY voices (only those unused since
        ``idle_since``, when given) and move them to RECLAIMING with ``reason``."""
        rows = (await s.execute(_reclaim_candidates(prov.name, now, idle_since))).scalars().all()
        reclaiming = (
            await s.execute(
                select(func.count()).where(
                    VoiceRow.provider == prov.name, VoiceRow.state == S.RECLAIMING.value
                )
            )
        ).scalar_one()
        candidates = [
            SlotCandidate(
                r.id,
                r.last_used_at,
                r.state_changed_at,
                r.pinned,
                0,  # leased voices are never candidates (_reclaim_candidates)
                usage=usage_of(r),
            )
            for r in rows
        ]
        pressure = ProviderPressure(
            backlog=waiting,
            free_slots=free,
            add_edit_remaining=prov.add_edit_remaining,
            reclaiming=int(reclaiming),
            oldest_waiting_since=await self._oldest_waiting(s, prov.name, now),
            shape=await self._session_shape(s, prov.name),
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
            transition(s, row, S.RECLAIMING, reason, now)
            targets.append(ReclaimTarget(row.id, row.provider, row.provider_voice_id, reason))
        return targets

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
            transition(s, row, S.RECLAIMING, reason, now)
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
                # Confirmed gone: only now may the voice's label move on, so that no
                # look-up of the old label can meet a copy of the new one.
                row.provider_voice_id = None
                row.generation += 1
                transition(s, row, S.IDLE, target.reason, now)
            else:
                row.last_error = bounded(error)
                transition(s, row, S.READY, target.reason, now, message=f"reclaim failed: {error}")

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

    async def ready_voices(self, provider: str) -> list[Voice]:
        async with self._sessions() as s:
            q = select(VoiceRow).where(
                VoiceRow.provider == provider, VoiceRow.state == S.READY.value
            )
            return [record(r) for r in (await s.execute(q)).scalars().all()]

    async def voices_seen(self, provider: str) -> dict[str, VoiceSeen]:
        """Every voice at ``provider`` as far as the ownership of remote copies goes (see
        ``domain.states.late_copy_fate``), by voice id."""
        async with self._sessions() as s:
            q = select(
                VoiceRow.id, VoiceRow.state, VoiceRow.generation, VoiceRow.provider_voice_id
            ).where(VoiceRow.provider == provider)
            return {
                voice_id: VoiceSeen(VoiceState(state), generation, remote_id)
                for voice_id, state, generation, remote_id in (await s.execute(q)).all()
            }

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
            # The provider's listing says the copy is gone: as after a confirmed delete,
            # the next copy gets a label of its own.
            row.provider_voice_id = None
            row.generation += 1
            transition(
                s,
                row,
                S.IDLE,
                EventReason.DRIFT_REMOTE_MISSING,
                now,
                message=f"{provider_voice_id} is gone at {row.provider}",
            )
            return True
