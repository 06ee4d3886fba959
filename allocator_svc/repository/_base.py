"""What every part of the repository shares: the engines, row-to-record conversion, the
event log, the fenced transition, and the one definition of an active lease.

Every state change is a fenced UPDATE (``WHERE state = expected [AND token = …]``) in a
transaction of its own; provider calls happen between these transactions, never inside
one. On PostgreSQL rows are locked with ``FOR UPDATE`` (the provider row with ``SKIP
LOCKED`` so a replica never waits for another's dispatch); on SQLite every transaction
is ``BEGIN IMMEDIATE`` (see ``voiceslot.db``), which serializes writers.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import SQLCoreOperations

from allocator_svc.domain.states import SLOT_HOLDING, EventReason, VoiceState, check_transition
from allocator_svc.models import LeaseRow, VoiceEventRow, VoiceRow
from allocator_svc.records import Voice
from voiceslot.errors import NotFound, bounded

S = VoiceState
HOLDING = [s.value for s in SLOT_HOLDING]
"""States whose voices occupy a slot at their provider (or are about to)."""


def naive_utc(t: datetime) -> datetime:
    """How ``UtcDateTime`` stores a moment, for hand-written statements."""
    return t.astimezone(UTC).replace(tzinfo=None)


def active_leases(voice_id: SQLCoreOperations[Any], now: Any) -> Any:
    """The number of live leases on ``voice_id``, as a scalar subquery: the one
    definition of "active lease" (unexpired), which every reader uses. (voice_id,
    expires_at) is indexed, but PostgreSQL still visits each counted row to check it is
    visible, so the lease grant (the hot path) reads the voice's kept count instead
    (``leases_held``, equal to this once the grant has deleted the expired ones)."""
    return (
        select(func.count())
        .where(LeaseRow.voice_id == voice_id, LeaseRow.expires_at > now)
        .scalar_subquery()
    )


RECORD_COLUMNS = (
    VoiceRow.id,
    VoiceRow.owner,
    VoiceRow.display_name,
    VoiceRow.provider,
    VoiceRow.language,
    VoiceRow.state,
    VoiceRow.generation,
    VoiceRow.provider_voice_id,
    VoiceRow.pinned,
    VoiceRow.sample_key,
    VoiceRow.sample_sha256,
    VoiceRow.sample_bytes,
    VoiceRow.last_error,
    VoiceRow.created_at,
    VoiceRow.updated_at,
    VoiceRow.state_changed_at,
    VoiceRow.last_used_at,
)
"""The columns ``voice_from`` reads: what a statement returns for a record, and no more
(the lease grant returns a row per caller; every column more is decoded and converted
on the hot path)."""

_STATES = {s.value: s for s in VoiceState}
"""By stored value: a dict lookup, where ``VoiceState(value)`` runs Enum's machinery."""


def voice_from(m: Mapping[str, Any], active: int) -> Voice:
    """A record from a voices row (ORM attributes or a Core result mapping alike) holding
    at least ``RECORD_COLUMNS``."""
    return Voice(
        id=m["id"],
        owner=m["owner"],
        display_name=m["display_name"],
        provider=m["provider"],
        language=m["language"],
        state=_STATES[m["state"]],
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
        active_leases=active,
    )


def record(row: VoiceRow, active: int = 0) -> Voice:
    return voice_from({c.key: getattr(row, c.key) for c in VoiceRow.__table__.c}, active)


def event(
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


def insert_event_from(
    voice_id: Any, reason: Any, before: Any, after: Any, message: Any, at: Any
) -> Any:
    """``INSERT INTO voice_events … SELECT``: events written by Core statements (the lease
    grant, the completion), one row per row of the select these columns come from."""
    return insert(VoiceEventRow).from_select(
        ["voice_id", "reason", "from_state", "to_state", "message", "occurred_at"],
        select(voice_id, reason, before, after, message, at),
    )


def transition(
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
    event(s, row.id, reason, now, before=current, after=target, message=message)


class RepositoryBase:
    """Engines and the helpers every concern's methods share."""

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

    @staticmethod
    async def _lock_voice(s: AsyncSession, voice_id: str, owner: str | None) -> VoiceRow:
        q = select(VoiceRow).where(VoiceRow.id == voice_id).with_for_update()
        row = (await s.execute(q)).scalar_one_or_none()
        if row is None or (owner is not None and row.owner != owner):
            raise NotFound("voice", voice_id)
        return row

    @staticmethod
    async def _lease_counts(
        s: AsyncSession | AsyncConnection, voice_ids: list[str], now: datetime
    ) -> dict[str, int]:
        """Active leases per voice (voices without any are left out)."""
        if not voice_ids:
            return {}
        q = select(VoiceRow.id, active_leases(VoiceRow.id, now)).where(VoiceRow.id.in_(voice_ids))
        return {vid: int(n) for vid, n in (await s.execute(q)).all() if n}

    @classmethod
    async def _active_leases(cls, s: AsyncSession, voice_id: str, now: datetime) -> int:
        return (await cls._lease_counts(s, [voice_id], now)).get(voice_id, 0)
