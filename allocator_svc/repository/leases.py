"""Leases: the promise that a READY voice is not reclaimed while someone synthesizes with
it. Granting one is the allocator's hot path (EnsureActiveVoice on a READY voice).

There is one grant, built once from SQLAlchemy Core (``_Grant``): a request is granted iff
its voice is READY and, for a user, theirs; granting touches ``last_used_at``, deletes the
voice's expired leases (recording their expiry), inserts the lease and its event, and
reports the voice's active leases from the count of lease rows the voice row keeps
(``leases_held``), which after that deletion are all active. Every writer of leases
(grant, release, renewal, the expiry sweep) locks the voice's row before any lease row,
so none of them can deadlock with the grant's deletion. Only how the requests come in
and how the steps are sent differs by database: on PostgreSQL the requests are arrays
(``unnest``) and the steps are data-modifying CTEs of one statement, which batches many
callers (``_LeaseBatcher``); SQLite has no data-modifying CTEs, so the same steps run as
separate statements inside its ``BEGIN IMMEDIATE`` transaction, one request at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Integer,
    String,
    and_,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from allocator_svc.domain.states import EventReason
from allocator_svc.models import LeaseRow, VoiceRow
from allocator_svc.records import Lease, ReadyOutcome
from allocator_svc.repository._base import (
    RECORD_COLUMNS,
    RepositoryBase,
    S,
    event,
    insert_event_from,
    naive_utc,
    voice_from,
)
from allocator_svc.repository._driver import DriverConnections, DriverStatement, worth_retrying
from allocator_svc.repository.slots import usage_touch
from voiceslot.batching import Batches
from voiceslot.db import UtcDateTime
from voiceslot.errors import NotFound, bounded
from voiceslot.ids import new_id


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
class LeaseAsk:
    """One caller's request for a lease, as the grant statement takes it."""

    params: EnsureParams
    now: datetime
    lease_id: str

    @property
    def expires_at(self) -> datetime:
        return self.now + self.params.lease_ttl

    def outcome(self, m: Mapping[str, Any]) -> ReadyOutcome:
        p = self.params
        voice = voice_from(m, int(m["active"]))
        return ReadyOutcome(voice, Lease(self.lease_id, p.voice_id, p.holder, self.expires_at))


def recount_leases(*where: ColumnElement[bool]) -> Any:
    """``UPDATE voices SET leases_held = <their lease rows, counted>`` for the voices
    ``where`` selects, whose rows the caller has locked: the expiry sweep's, off the hot
    path, which so also mends a count gone wrong (a replica of an older release that
    released a lease without counting it, during a rolling upgrade)."""
    rows = select(func.count()).where(LeaseRow.voice_id == VoiceRow.id).scalar_subquery()
    return update(VoiceRow).where(*where).values(leases_held=rows)


_EPOCH = literal(datetime(1970, 1, 1), DateTime())
"""Before any lease: where a voice that never purged starts looking."""

SWEEP_VOICES = 500
"""Voices whose expired leases one sweep transaction deletes (a bound on its locks and
on the statement's parameters)."""

_REQ_COLUMNS = ("idx", "voice_id", "owner", "lease_id", "holder", "expires_at")


def insert_expiries(expired: Any, now: Any) -> Any:
    """The expiry events of the leases in ``expired`` (voice_id, holder), written before
    those leases are deleted: by the grant (for its voice) and by the expiry sweep."""
    gone, none = literal(EventReason.LEASE_EXPIRED.value), literal("")
    return insert_event_from(expired.c.voice_id, gone, none, none, expired.c.holder, now)


def _aware(column: Any) -> Any:
    """A timestamp column as PostgreSQL's ``timestamptz`` (the stored value read as UTC),
    which the driver itself decodes to an aware datetime: converting the naive values
    in Python (``UtcDateTime``) was the largest share of reading the grant's rows, four
    timestamps per caller. Other columns as they are."""
    if not isinstance(column.type, UtcDateTime):
        return column
    return func.timezone("UTC", column, type_=DateTime(timezone=True)).label(column.name)


def _owner_ok(asked: Any, actual: Any) -> ColumnElement[bool]:
    """An admin (no owner) may lease any voice; a user only their own."""
    return asked.is_(None) | (asked == actual)


class _Grant:
    """The grant, built once (building constructs per call cost more than the database
    work); callers only bind parameters. Parameter names are prefixed ``b_``: one named
    like a column of an UPDATE's table would be taken as one more SET."""

    def __init__(self) -> None:
        now = bindparam("b_now", type_=UtcDateTime())
        # PostgreSQL: many requests as arrays, one statement.
        pg_req = (
            select(
                func.unnest(
                    cast(bindparam("b_idx"), ARRAY(Integer())),
                    cast(bindparam("b_voice_ids"), ARRAY(String())),
                    cast(bindparam("b_owners"), ARRAY(String())),
                    cast(bindparam("b_lease_ids"), ARRAY(String())),
                    cast(bindparam("b_holders"), ARRAY(String())),
                    cast(bindparam("b_expires"), ARRAY(DateTime())),
                )
                .table_valued(*_REQ_COLUMNS)
                .render_derived(name="r")
            )
        ).cte("req")
        # Voices are locked in id order: two batches (or a batch and a reclaim, which
        # locks in id order too) cannot deadlock. A join driven by the requests, not a
        # semi-join of the voices: the planner scanned every READY voice for the latter
        # (28 ms at 50,000). A voice asked for twice is locked once and touched once.
        locked = (
            select(VoiceRow.id, VoiceRow.leases_purged_to)
            .join_from(
                pg_req,
                VoiceRow,
                and_(VoiceRow.id == pg_req.c.voice_id, _owner_ok(pg_req.c.owner, VoiceRow.owner)),
            )
            .where(VoiceRow.state == S.READY.value)
            .order_by(VoiceRow.id)
            .with_for_update(of=VoiceRow)
            .cte("locked")
        )
        # The voices' expired leases go first (with their expiry events, as the sweeper
        # would record them): what is left afterwards is active, so the voice's count of
        # lease rows is its active leases, read without visiting them. Only those that
        # expired since the last purge are looked for: the index still holds the rows
        # deleted before (until VACUUM), and stepping over them grew with time.
        purged = (
            delete(LeaseRow)
            .where(
                LeaseRow.voice_id == locked.c.id,
                LeaseRow.expires_at <= now,
                LeaseRow.expires_at > func.coalesce(locked.c.leases_purged_to, _EPOCH),
            )
            .returning(LeaseRow.voice_id, LeaseRow.holder)
            .cte("purged")
        )
        asked = (
            select(func.count())
            .where(pg_req.c.voice_id == VoiceRow.id, _owner_ok(pg_req.c.owner, VoiceRow.owner))
            .scalar_subquery()
        )
        gone = select(func.count()).where(purged.c.voice_id == VoiceRow.id).scalar_subquery()
        touched = (
            update(VoiceRow)
            .where(VoiceRow.id == locked.c.id)
            .values(
                last_used_at=now,
                leases_held=VoiceRow.leases_held + asked - gone,
                # Never backwards (a replica whose clock is behind).
                leases_purged_to=func.greatest(
                    func.coalesce(VoiceRow.leases_purged_to, _EPOCH), now
                ),
                **usage_touch(now, postgres=True),
            )
            .returning(*RECORD_COLUMNS, VoiceRow.leases_held)
            .cte("touched")
        )
        granted = self._granted(pg_req, touched).cte("granted")
        self.pg = (
            select(
                granted.c.idx,
                *[_aware(touched.c[c.name]) for c in RECORD_COLUMNS],
                touched.c.leases_held.label("active"),
            )
            .join_from(granted, touched, touched.c.id == granted.c.voice_id)
            .add_cte(self._insert_leases(granted, now).cte("new_leases"))
            .add_cte(self._insert_events(granted, now).cte("new_events"))
            .add_cte(insert_expiries(purged, now).cte("expiry_events"))
        )
        # SQLite: one request as scalar parameters, the same steps one by one.
        one_req = select(
            *[
                bindparam(f"b_{name}", type_=UtcDateTime() if name == "expires_at" else None).label(
                    name
                )
                for name in _REQ_COLUMNS
            ]
        ).subquery("req")
        self.touch = (
            update(VoiceRow)
            .where(
                VoiceRow.id == bindparam("b_voice_id"),
                VoiceRow.state == S.READY.value,
                _owner_ok(bindparam("b_owner"), VoiceRow.owner),
            )
            .values(
                last_used_at=now,
                leases_held=VoiceRow.leases_held + 1,
                **usage_touch(now, postgres=False),
            )
        )
        voices = VoiceRow.__table__
        granted_one = self._granted(one_req, voices).subquery("granted")
        expired_one = (
            LeaseRow.voice_id == bindparam("b_voice_id"),
            LeaseRow.expires_at <= now,
        )
        self.expire_one = insert_expiries(
            select(LeaseRow.voice_id, LeaseRow.holder).where(*expired_one).subquery("expired"),
            now,
        )
        self.purge_one = delete(LeaseRow).where(*expired_one)
        self.uncount = (
            update(VoiceRow)
            .where(VoiceRow.id == bindparam("b_voice_id"))
            .values(leases_held=VoiceRow.leases_held - bindparam("b_purged"))
        )
        self.insert_lease = self._insert_leases(granted_one, now)
        self.insert_event = self._insert_events(granted_one, now)
        self.read = select(
            literal(0).label("idx"),
            *RECORD_COLUMNS,
            VoiceRow.leases_held.label("active"),
        ).where(VoiceRow.id == bindparam("b_voice_id"))

    @staticmethod
    def _granted(req: Any, voices: Any) -> Any:
        """The requests that are granted: the voice (touched, so READY) and, for a
        user, theirs."""
        return select(req, voices.c.owner.label("voice_owner")).join_from(
            req,
            voices,
            and_(
                voices.c.id == req.c.voice_id,
                voices.c.state == S.READY.value,
                _owner_ok(req.c.owner, voices.c.owner),
            ),
        )

    @staticmethod
    def _insert_leases(granted: Any, now: Any) -> Any:
        return insert(LeaseRow).from_select(
            ["id", "voice_id", "owner", "holder", "expires_at", "created_at"],
            select(
                granted.c.lease_id,
                granted.c.voice_id,
                granted.c.voice_owner,
                granted.c.holder,
                granted.c.expires_at,
                now,
            ),
        )

    @staticmethod
    def _insert_events(granted: Any, now: Any) -> Any:
        leased, none = literal(EventReason.LEASED.value), literal("")
        return insert_event_from(granted.c.voice_id, leased, none, none, granted.c.holder, now)

    @staticmethod
    def pg_params(asks: Sequence[LeaseAsk]) -> dict[str, Any]:
        """The PostgreSQL statement's parameters for ``asks``."""
        return {
            "b_idx": list(range(len(asks))),
            "b_voice_ids": [a.params.voice_id for a in asks],
            "b_owners": [a.params.owner for a in asks],
            "b_lease_ids": [a.lease_id for a in asks],
            "b_holders": [bounded(a.params.holder) for a in asks],
            "b_expires": [naive_utc(a.expires_at) for a in asks],
            "b_now": max(a.now for a in asks),
        }

    PG_BOUND = (
        "b_idx",
        "b_voice_ids",
        "b_owners",
        "b_lease_ids",
        "b_holders",
        "b_expires",
        "b_now",
    )

    async def run(self, conn: AsyncConnection, asks: Sequence[LeaseAsk]) -> list[Any]:
        """Grant what can be granted; result rows carry ``idx`` (the ask's index), the
        voice's columns and ``active`` (its active leases, the new one included)."""
        if conn.dialect.name == "postgresql":
            return [row._mapping for row in await conn.execute(self.pg, self.pg_params(asks))]
        (ask,) = asks  # SQLite has no batcher: one caller at a time
        params = {
            "b_idx": 0,
            "b_voice_id": ask.params.voice_id,
            "b_owner": ask.params.owner,
            "b_lease_id": ask.lease_id,
            "b_holder": bounded(ask.params.holder),
            "b_expires_at": ask.expires_at,
            "b_now": ask.now,
        }
        if (await conn.execute(self.touch, params)).rowcount == 0:  # counts the new lease
            return []
        if purged := (await conn.execute(self.expire_one, params)).rowcount:
            await conn.execute(self.purge_one, params)
            await conn.execute(self.uncount, {**params, "b_purged": purged})
        await conn.execute(self.insert_lease, params)
        await conn.execute(self.insert_event, params)
        return [row._mapping for row in await conn.execute(self.read, params)]


GRANT = _Grant()


class LeasesRepository(RepositoryBase):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batcher = _LeaseBatcher(self._hot) if self._hot is not None else None

    async def aclose(self) -> None:
        """Hand back the connections the hot path keeps (before the engines' dispose)."""
        if self._batcher is not None:
            await self._batcher.aclose()

    async def _lease_hot(self, p: EnsureParams, now: datetime) -> ReadyOutcome | None:
        """Lease a READY voice without locking it first (None: not READY, or not theirs).
        The touch is a fenced ``UPDATE … WHERE state = 'ready'``, so a concurrent reclaim
        either sees the lease (it locks the row and counts leases after this commits) or
        wins first, and then no lease is made."""
        if self._batcher is not None:
            return await self._batcher.lease(p, now)
        async with self._engine.begin() as conn:
            return await self._lease_ready(conn, p, now)

    @staticmethod
    async def _lease_ready(
        conn: AsyncConnection, p: EnsureParams, now: datetime
    ) -> ReadyOutcome | None:
        ask = LeaseAsk(p, now, new_id("ls"))
        rows = await GRANT.run(conn, [ask])
        return ask.outcome(rows[0]) if rows else None

    async def renew_lease(
        self, lease_id: str, ttl: timedelta, now: datetime, *, owner: str | None
    ) -> Lease:
        async with self._sessions.begin() as s:
            lease = await self._lock_with_voice(s, lease_id, owner)
            if lease is None or lease.expires_at <= now:
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
            lease = await self._lock_with_voice(s, lease_id, owner)
            if lease is None:
                return None
            await s.delete(lease)
            provider = (
                await s.execute(
                    update(VoiceRow)
                    .where(VoiceRow.id == lease.voice_id)
                    .values(last_used_at=now, leases_held=VoiceRow.leases_held - 1)
                    .returning(VoiceRow.provider)
                )
            ).scalar_one_or_none()
            event(s, lease.voice_id, EventReason.LEASE_RELEASED, now, message=lease.holder)
            return provider

    @staticmethod
    async def _lock_with_voice(
        s: AsyncSession, lease_id: str, owner: str | None
    ) -> LeaseRow | None:
        """The lease (None: unknown, or not ``owner``'s), locked after its voice's row:
        every writer of leases locks the voice first, as the grant does (it deletes the
        voice's expired leases and counts the rest)."""
        voice_id = (
            await s.execute(select(LeaseRow.voice_id).where(LeaseRow.id == lease_id))
        ).scalar_one_or_none()
        if voice_id is None:
            return None
        await s.execute(select(VoiceRow.id).where(VoiceRow.id == voice_id).with_for_update())
        lease = await s.get(LeaseRow, lease_id, with_for_update=True, populate_existing=True)
        if lease is None or (owner is not None and lease.owner != owner):
            return None
        return lease

    async def expire_leases(self, now: datetime) -> list[str]:
        """Delete expired leases; ids of the voices that had some. Their voices are
        locked first, in id order (as the grant locks them), ``SWEEP_VOICES`` to a
        transaction, and their lease counts taken afresh; so replicas sweeping at once
        record each expiry once."""
        swept: set[str] = set()
        while True:
            async with self._sessions.begin() as s:
                due = select(LeaseRow.voice_id).where(LeaseRow.expires_at <= now)
                voice_ids = list(
                    (
                        await s.execute(
                            select(VoiceRow.id)
                            .where(VoiceRow.id.in_(due))
                            .order_by(VoiceRow.id)
                            .limit(SWEEP_VOICES)
                            .with_for_update()
                        )
                    ).scalars()
                )
                if not voice_ids:
                    return sorted(swept)
                expired = (LeaseRow.voice_id.in_(voice_ids), LeaseRow.expires_at <= now)
                await s.execute(
                    insert_expiries(
                        select(LeaseRow.voice_id, LeaseRow.holder).where(*expired).subquery(),
                        literal(now, UtcDateTime()),
                    )
                )
                gone = (
                    await s.execute(delete(LeaseRow).where(*expired).returning(LeaseRow.voice_id))
                ).scalars()
                swept.update(gone)
                await s.execute(recount_leases(VoiceRow.id.in_(voice_ids)))
            if len(voice_ids) < SWEEP_VOICES:
                return sorted(swept)

    async def lease_count_drift(self) -> list[tuple[str, int, int]]:
        """Voices whose ``leases_held`` disagrees with their lease rows: (voice, kept,
        counted). Empty while every lease writer keeps it, which tests check after every
        scenario."""
        counted = (
            select(LeaseRow.voice_id, func.count().label("n"))
            .group_by(LeaseRow.voice_id)
            .subquery()
        )
        found = func.coalesce(counted.c.n, 0)
        async with self._sessions() as s:
            rows = await s.execute(
                select(VoiceRow.id, VoiceRow.leases_held, found)
                .outerjoin(counted, counted.c.voice_id == VoiceRow.id)
                .where(VoiceRow.leases_held != found)
                .order_by(VoiceRow.id)
            )
            return [(voice_id, kept, int(n)) for voice_id, kept, n in rows]

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


class _LeaseBatcher:
    """Coalesces concurrent hot-path leases into one statement on PostgreSQL
    (``voiceslot.batching``): under load, the per-statement overhead, not the work,
    limits EnsureActiveVoice.

    The statement runs on the driver's own connection (``_driver``) in autocommit: it is
    its own transaction, atomic, one round trip. A connection found dropped fails on
    use, and the batch is retried once on a fresh one (also once on a deadlock, which
    the id-ordered locking should make impossible). Up to ``max_inflight`` batches go at
    once, the second and later only beside one that is stuck.
    """

    def __init__(self, engine: AsyncEngine, *, max_batch: int = 128, max_inflight: int = 4) -> None:
        self._connections = DriverConnections(engine)
        self._statement = DriverStatement(GRANT.pg, engine.dialect, bound=GRANT.PG_BOUND)
        self._batches: Batches[LeaseAsk, ReadyOutcome | None] = Batches(
            self._grant, max_batch=max_batch, max_inflight=max_inflight
        )

    async def lease(self, p: EnsureParams, now: datetime) -> ReadyOutcome | None:
        return await self._batches.submit(LeaseAsk(p, now, new_id("ls")))

    async def aclose(self) -> None:
        self._batches.close()
        await self._connections.aclose()

    async def _grant(self, asks: list[LeaseAsk]) -> list[ReadyOutcome | None]:
        """Each ask's outcome (None: not granted). A caller that went away meanwhile
        leaves a lease that simply expires."""
        granted = {int(m["idx"]): m for m in await self._execute(asks)}
        return [
            None if (m := granted.get(i)) is None else ask.outcome(m) for i, ask in enumerate(asks)
        ]

    async def _execute(self, asks: list[LeaseAsk]) -> list[dict[str, Any]]:
        args = self._statement.arguments(GRANT.pg_params(asks))
        for attempt in (1, 2):
            held = await self._connections.take()
            try:
                records = await held.driver.fetch(self._statement.sql, *args)
            except BaseException as exc:
                await self._connections.discard(held)
                if attempt == 2 or not isinstance(exc, Exception) or not worth_retrying(exc):
                    raise
            else:
                self._connections.give(held)
                return self._statement.rows(records)
        raise AssertionError("unreachable")
