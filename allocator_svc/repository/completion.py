"""Completing allocations: ALLOCATING → READY fenced by the claim's token, its event, the
request done, and the clone's duration folded into the provider's mean.

On PostgreSQL completions are one statement for many (``CompletionBatcher``): a
dispatch round's clones tend to answer together, and a statement per completion cost a
round trip and a write of the provider row (which every claim round locks) each. The
completions come in as arrays (``unnest``), the voices are locked in id order (as every
path locking several voices does) and the steps are data-modifying CTEs. SQLite (one
writer) runs the same steps one completion at a time in its transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    Integer,
    String,
    bindparam,
    case,
    cast,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from allocator_svc.domain.estimates import CLONE_SECONDS_WEIGHT, ewma
from allocator_svc.models import AllocationRequestRow, ProviderRow, VoiceRow
from allocator_svc.repository._base import S, insert_event_from, naive_utc
from voiceslot.batching import Batches
from voiceslot.db import UtcDateTime

_R, _V, _P = AllocationRequestRow, VoiceRow, ProviderRow

FIELDS = (
    "voice_id",
    "token",
    "remote",
    "message",
    "reason",
    "request_id",
    "fence",
    "provider",
    "seconds",
    "now",
)
"""What one completion binds (as ``b_<field>``; on PostgreSQL as arrays)."""

_ARRAY_TYPES: dict[str, Any] = {
    "voice_id": String(),
    "token": String(),
    "remote": String(),
    "message": String(),
    "reason": String(),
    "request_id": BigInteger(),
    "fence": DateTime(),
    "provider": String(),
    "seconds": Float(),
    "now": DateTime(),  # naive UTC, as UtcDateTime stores moments
}
_SCALAR_TYPES: dict[str, Any] = _ARRAY_TYPES | {"fence": UtcDateTime(), "now": UtcDateTime()}
_MOMENTS = ("fence", "now")


def _fenced(want: Any) -> Any:
    """The voice is still ALLOCATING under the claim's token; and for a reset acting on
    someone else's claim (``fence`` set), the dispatcher's lease ran out by ``fence``.
    The dispatcher itself completes with no fence."""
    return (
        _V.id == want.c.voice_id,
        _V.state == S.ALLOCATING.value,
        _V.allocation_token == want.c.token,
        or_(
            want.c.fence.is_(None),
            exists().where(
                _R.id == want.c.request_id,
                _R.lease_token == want.c.token,
                _R.lease_expires_at <= want.c.fence,
            ),
        ),
    )


def _ready(target: Any) -> Any:
    """The voice's UPDATE; ``target`` names the completion each voice row gets."""
    now = target.c.now
    return update(_V).values(
        state=S.READY.value,
        provider_voice_id=target.c.remote,
        allocation_token=None,
        last_error="",
        last_used_at=now,
        state_changed_at=now,
        updated_at=now,
    )


def _event(done: Any) -> Any:
    before, after = literal(S.ALLOCATING.value), literal(S.READY.value)
    c = done.c
    return insert_event_from(c.voice_id, c.reason, before, after, c.message, c.now)


def _request(done: Any) -> Any:
    return (
        update(_R)
        .where(_R.id == done.c.request_id)
        .values(state="done", lease_token=None, updated_at=done.c.now)
    )


def fold_ewma(previous: Any, first: Any, n: Any, weighted: Any) -> Any:
    """``domain.estimates.ewma`` applied to ``n`` samples x_1..x_n in turn, in closed form:
    (1 - w)^n · m_0 + Σ w (1 - w)^(n - i) · x_i, where m_0 is ``previous``, or the first
    sample when there is none yet (as ``ewma(coalesce(m, x), x)`` starts), and
    ``weighted`` is that sum. For one sample this is ``ewma`` itself."""
    keep = 1.0 - CLONE_SECONDS_WEIGHT
    return func.power(keep, n) * func.coalesce(previous, first) + weighted


def _timing(done: Any) -> Any:
    """Fold the completed clones' durations (``seconds``; None: not measured, e.g. a
    reset's adoption) into each provider's mean, in the batch's order."""
    timed = (
        select(
            done.c.provider,
            done.c.seconds,
            func.row_number().over(partition_by=done.c.provider, order_by=done.c.idx).label("i"),
            func.count().over(partition_by=done.c.provider).label("n"),
        )
        .where(done.c.seconds.is_not(None))
        .subquery("timed")
    )
    keep = 1.0 - CLONE_SECONDS_WEIGHT
    agg = (
        select(
            timed.c.provider,
            func.max(timed.c.n).label("n"),
            func.max(case((timed.c.i == 1, timed.c.seconds))).label("first"),
            func.sum(
                CLONE_SECONDS_WEIGHT * func.power(keep, timed.c.n - timed.c.i) * timed.c.seconds
            ).label("weighted"),
        )
        .group_by(timed.c.provider)
        .subquery("agg")
    )
    return (
        update(_P)
        .where(_P.name == agg.c.provider)
        .values(clone_seconds=fold_ewma(_P.clone_seconds, agg.c.first, agg.c.n, agg.c.weighted))
    )


class CompleteStatements:
    """Built once; callers bind ``b_`` parameters (see ``FIELDS``)."""

    def __init__(self) -> None:
        # PostgreSQL: many completions as arrays, one statement.
        columns = ("idx", *FIELDS)
        arrays = [cast(bindparam("b_idx"), ARRAY(Integer()))] + [
            cast(bindparam(f"b_{f}"), ARRAY(_ARRAY_TYPES[f])) for f in FIELDS
        ]
        want = (select(func.unnest(*arrays).table_valued(*columns).render_derived(name="w"))).cte(
            "want"
        )
        locked = (
            select(_V.id, *(want.c[c] for c in columns))
            .where(*_fenced(want))
            .order_by(_V.id)
            .with_for_update(of=_V)
            .cte("locked")
        )
        voice = (
            _ready(locked)
            .where(_V.id == locked.c.id)
            .returning(_V.id.label("voice_id"))
            .cte("voice")
        )
        done = (
            select(*(locked.c[c] for c in columns))
            .join_from(locked, voice, voice.c.voice_id == locked.c.voice_id)
            .cte("done")
        )
        self.pg = (
            select(done.c.idx)
            .add_cte(_event(done).cte("e"))
            .add_cte(_request(done).cte("r"))
            .add_cte(_timing(done).cte("t"))
        )
        # SQLite: one completion, its steps as statements of their own.
        one = select(
            literal(0).label("idx"),
            *(bindparam(f"b_{f}", type_=_SCALAR_TYPES[f]).label(f) for f in FIELDS),
        ).subquery("w")
        self.voice = _ready(one).where(*_fenced(one)).returning(_V.id)
        self.event = _event(one)
        self.request = _request(one)
        seconds = bindparam("b_seconds", type_=Float())
        self.timing = (
            update(_P)
            .where(_P.name == bindparam("b_provider"), seconds.is_not(None))
            .values(clone_seconds=ewma(func.coalesce(_P.clone_seconds, seconds), seconds))
        )

    def pg_params(self, batch: list[Mapping[str, Any]]) -> dict[str, Any]:
        params: dict[str, Any] = {"b_idx": list(range(len(batch)))}
        for f in FIELDS:
            params[f"b_{f}"] = [c[f] for c in batch]
        for f in _MOMENTS:  # arrays carry no time zone
            params[f"b_{f}"] = [None if t is None else naive_utc(t) for t in params[f"b_{f}"]]
        return params

    async def run_one(self, conn: AsyncConnection, c: Mapping[str, Any]) -> bool:
        """One completion, its steps in the caller's transaction (SQLite)."""
        params = {f"b_{f}": c[f] for f in FIELDS}
        if (await conn.execute(self.voice, params)).first() is None:
            return False
        await conn.execute(self.event, params)
        await conn.execute(self.request, params)
        await conn.execute(self.timing, params)
        return True


COMPLETE = CompleteStatements()


class CompletionBatcher:
    """Coalesces concurrent completions into one statement on PostgreSQL
    (``voiceslot.batching``), strictly one batch at a time: under load batches grow by
    themselves while one completion alone goes out at once.

    Each runs on the autocommit engine: the statement is its own transaction, and every
    completion is durable before its caller hears of it. A failed batch fails each of
    its callers and is not retried (a completion's fence would make a retry after an
    unknown outcome look fenced off); the stuck sweeper adopts those by their label.
    """

    def __init__(self, engine: AsyncEngine, *, max_batch: int = 256) -> None:
        self._engine = engine
        self._batches: Batches[Mapping[str, Any], bool] = Batches(
            self._complete, max_batch=max_batch
        )

    async def complete(self, completion: Mapping[str, Any]) -> bool:
        """Whether this completion applied (False: fenced off)."""
        return await self._batches.submit(completion)

    async def _complete(self, batch: list[Mapping[str, Any]]) -> list[bool]:
        params = COMPLETE.pg_params(batch)
        async with self._engine.connect() as conn:
            done = {int(i) for (i,) in await conn.execute(COMPLETE.pg, params)}
        return [i in done for i in range(len(batch))]
