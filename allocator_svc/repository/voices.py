"""Voices: registration (idempotent by the caller's key), reading, pinning, the event
history, and deletion.

A voice's row is the truth about its remote copy: deleting a voice whose copy may still
exist at the provider keeps the row (holding its slot) until the copy is gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from allocator_svc.domain.states import EventReason, VoiceState
from allocator_svc.models import AllocationRequestRow, VoiceEventRow, VoiceRow
from allocator_svc.records import Deletion, Event, Voice
from allocator_svc.repository._base import HOLDING, RepositoryBase, S, event, record, transition
from voiceslot.errors import FailedPrecondition, NotFound


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


class VoicesRepository(RepositoryBase):
    async def find_by_idempotency_key(self, owner: str, key: str) -> Voice | None:
        async with self._sessions() as s:
            q = select(VoiceRow).where(VoiceRow.owner == owner, VoiceRow.idempotency_key == key)
            row = (await s.execute(q)).scalar_one_or_none()
            return None if row is None else record(row)

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
                event(s, new.id, EventReason.REGISTERED, now, after=S.REGISTERED)
                await s.flush()
                return record(row), True
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
            return record(row, await self._active_leases(s, voice_id, now))

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
                q = q.where(VoiceRow.state.in_(HOLDING))
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
            return [record(r, leases.get(r.id, 0)) for r in rows]

    async def begin_delete(
        self, voice_id: str, now: datetime, *, owner: str | None, force: bool
    ) -> tuple[Voice, Deletion | None]:
        """Start deleting a voice; returns (voice, the deletion still to finish).

        A voice whose remote copy may exist (READY; forced: RECLAIMING or ALLOCATING)
        becomes DELETING, a tombstone that keeps its slot counted: the caller deletes the
        remote copy and calls ``finish_delete``; if that fails, maintenance finishes it
        (``deletions``). Removing the row first would let a dispatcher clone into the
        slot while the old copy still occupies it, and would leave the copy to nobody.
        Any other voice's row is removed at once (events stay). Deleting a DELETING
        voice again retries the remote delete.
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
            voice = record(row, leases)
            if state in (S.READY, S.RECLAIMING, S.ALLOCATING):
                # A forced delete mid-clone fences the dispatcher off (its token goes).
                row.allocation_token = None
                transition(s, row, S.DELETING, EventReason.DELETED, now, message="deleting")
            if state in (S.READY, S.RECLAIMING, S.ALLOCATING, S.DELETING):
                return voice, await self._deletion(s, row, now)
            await s.delete(row)
            event(s, voice_id, EventReason.DELETED, now, before=state)
            return voice, None

    @staticmethod
    async def _deletion(s: AsyncSession, row: VoiceRow, now: datetime) -> Deletion:
        live = (
            await s.execute(
                select(func.count()).where(
                    AllocationRequestRow.voice_id == row.id,
                    AllocationRequestRow.state == "leased",
                    AllocationRequestRow.lease_expires_at > now,
                )
            )
        ).scalar_one()
        return Deletion(row.id, row.provider, row.provider_voice_id, row.generation, bool(live))

    async def finish_delete(self, voice_id: str, now: datetime) -> None:
        """Remove the row of a DELETING voice once its remote copy is confirmed gone."""
        async with self._sessions.begin() as s:
            row = await s.get(VoiceRow, voice_id, with_for_update=True)
            if row is None or row.state != S.DELETING.value:
                return
            await s.delete(row)
            event(s, voice_id, EventReason.DELETED, now, before=S.DELETING)

    async def deletions(self, now: datetime, *, provider: str = "") -> list[Deletion]:
        """Deletions left unfinished (a failed remote delete, a replica gone mid-way)."""
        async with self._sessions() as s:
            q = select(VoiceRow).where(VoiceRow.state == S.DELETING.value)
            if provider:
                q = q.where(VoiceRow.provider == provider)
            return [await self._deletion(s, r, now) for r in (await s.execute(q)).scalars()]

    async def set_pinned(self, voice_id: str, pinned: bool, now: datetime) -> Voice:
        async with self._sessions.begin() as s:
            row = await self._lock_voice(s, voice_id, None)
            if row.pinned != pinned:
                row.pinned = pinned
                row.updated_at = now
                reason = EventReason.PINNED if pinned else EventReason.UNPINNED
                event(s, voice_id, reason, now)
            return record(row, await self._active_leases(s, voice_id, now))

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

    async def watch_key(self, voice_id: str) -> tuple[str, datetime] | None:
        async with self._sessions() as s:
            row = (
                await s.execute(
                    select(VoiceRow.state, VoiceRow.updated_at).where(VoiceRow.id == voice_id)
                )
            ).one_or_none()
            return None if row is None else (row[0], row[1])
