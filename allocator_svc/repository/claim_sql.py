"""The statements that take a dispatch round's requests, built once from SQLAlchemy Core.

Taking a request moves it ``queued`` → ``leased`` (a fresh token, an expiry, one more
attempt) and its voice QUEUED → ALLOCATING (the same token) with the transition's
event, both only if both are still queued, both locked first. A round takes up to a
batch of them; taking them one ORM ``get`` at a time cost two round trips and a flush
per request under the provider row's lock, which every replica waits for.

On PostgreSQL the whole batch is one statement: the requests come in as arrays
(``unnest``), the lock is a ``SELECT … FOR UPDATE`` CTE (voices in id order, as every
path that locks several voices locks them), and the updates and the events are
data-modifying CTEs reading it. SQLite (one writer, ``BEGIN IMMEDIATE``) runs the same
steps one request at a time inside the round's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Integer, String, bindparam, cast, func, literal, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from allocator_svc.domain.states import EventReason, check_transition
from allocator_svc.models import AllocationRequestRow, VoiceRow
from allocator_svc.records import Claim
from allocator_svc.repository._base import S, insert_event_from
from voiceslot.db import UtcDateTime

_R, _V = AllocationRequestRow, VoiceRow


def _locked(want: Any) -> Any:
    """The wanted requests still queued, with their voices still QUEUED, both locked:
    (id, voice_id, token). Voices are locked in id order."""
    return (
        select(_R.id, _R.voice_id, want.c.token)
        .join(want, want.c.id == _R.id)
        .join(_V, _V.id == _R.voice_id)
        .where(_R.state == "queued", _V.state == S.QUEUED.value)
        .order_by(_V.id)
        .with_for_update(of=[_R, _V])
    )


def _take_requests(locked: Any, now: Any, expires: Any) -> Any:
    # The generation (and so the remote label) stays as it is: a clone of an earlier
    # attempt may yet complete at the provider, and this attempt must find it by the
    # same label. It moves on only once a remote copy is confirmed deleted.
    return (
        update(_R)
        .where(_R.id == locked.c.id)
        .values(
            state="leased",
            lease_token=locked.c.token,
            lease_expires_at=expires,
            attempts=_R.attempts + 1,
            updated_at=now,
        )
    )


def _take_voices(locked: Any, now: Any) -> Any:
    return (
        update(_V)
        .where(_V.id == locked.c.voice_id)
        .values(
            state=S.ALLOCATING.value,
            allocation_token=locked.c.token,
            state_changed_at=now,
            updated_at=now,
        )
    )


def _started_events(taken: Any, now: Any) -> Any:
    """The transitions' events, from rows with the taken requests' voice_id and
    attempts (after the increment)."""
    message = literal("attempt ") + cast(taken.c.attempts, String())
    return insert_event_from(
        taken.c.voice_id,
        literal(EventReason.ALLOCATION_STARTED.value),
        literal(S.QUEUED.value),
        literal(S.ALLOCATING.value),
        message,
        now,
    )


class ClaimStatements:
    """Built once (constructs cost more than binding); callers bind ``b_`` parameters."""

    def __init__(self) -> None:
        check_transition(S.QUEUED, S.ALLOCATING)
        now = bindparam("b_now", type_=UtcDateTime())
        expires = bindparam("b_expires", type_=UtcDateTime())
        # PostgreSQL: the batch as arrays, one statement.
        want = (
            select(
                func.unnest(
                    cast(bindparam("b_ids"), ARRAY(BigInteger())),
                    cast(bindparam("b_tokens"), ARRAY(String())),
                )
                .table_valued("id", "token")
                .render_derived(name="w")
            )
        ).subquery("want")
        locked = _locked(want).cte("locked")
        req = (
            _take_requests(locked, now, expires)
            .returning(_R.id, _R.voice_id, _R.owner, _R.attempts, _R.lease_token)
            .cte("req")
        )
        voice = (
            _take_voices(locked, now)
            .returning(_V.id, _V.provider, _V.generation, _V.sample_key, _V.language)
            .cte("voice")
        )
        self.pg = (
            select(
                req.c.id,
                voice.c.id,
                voice.c.provider,
                voice.c.generation,
                req.c.lease_token,
                req.c.attempts,
                voice.c.sample_key,
                voice.c.language,
                req.c.owner,
            )
            .join_from(req, voice, voice.c.id == req.c.voice_id)
            .add_cte(_started_events(req, now).cte("e"))
        )
        # SQLite: one request at a time, the same steps as statements of their own.
        one = select(
            bindparam("b_id", type_=Integer()).label("id"),
            bindparam("b_token", type_=String()).label("token"),
        ).subquery("want")
        self.lite_lock = _locked(one)
        row = select(
            bindparam("b_id", type_=Integer()).label("id"),
            bindparam("b_voice_id", type_=String()).label("voice_id"),
            bindparam("b_token", type_=String()).label("token"),
        ).subquery("locked")
        self.lite_requests = _take_requests(row, now, expires)
        self.lite_voices = _take_voices(row, now)
        taken = select(_R.voice_id, _R.attempts).where(_R.id == row.c.id).subquery("taken")
        self.lite_event = _started_events(taken, now)
        self.lite_claimed = (
            select(
                _R.id,
                _V.id,
                _V.provider,
                _V.generation,
                _R.lease_token,
                _R.attempts,
                _V.sample_key,
                _V.language,
                _R.owner,
            )
            .join_from(_R, _V, _V.id == _R.voice_id)
            .where(_R.id == bindparam("b_id", type_=Integer()))
        )

    async def take(
        self,
        conn: AsyncConnection,
        wanted: Sequence[tuple[int, str]],
        now: datetime,
        expires: datetime,
    ) -> list[tuple[Claim, str]]:
        """Take the ``wanted`` (request id, fresh token) that are still queued, in the
        caller's transaction: (the claim, its owner) of each one taken."""
        if not wanted:
            return []
        if conn.dialect.name == "postgresql":
            params = {
                "b_ids": [i for i, _ in wanted],
                "b_tokens": [t for _, t in wanted],
                "b_now": now,
                "b_expires": expires,
            }
            rows = list(await conn.execute(self.pg, params))
        else:
            rows = []
            for req_id, token in wanted:
                p: dict[str, Any] = {"b_id": req_id, "b_token": token}
                locked = (await conn.execute(self.lite_lock, p)).first()
                if locked is None:
                    continue
                p |= {"b_voice_id": locked.voice_id, "b_now": now, "b_expires": expires}
                await conn.execute(self.lite_requests, p)
                await conn.execute(self.lite_voices, p)
                await conn.execute(self.lite_event, p)
                rows.append((await conn.execute(self.lite_claimed, p)).one())
        order = {req_id: i for i, (req_id, _) in enumerate(wanted)}
        rows.sort(key=lambda r: order[r[0]])  # the fair order the caller asked in
        return [(Claim(*r[:8]), r[8]) for r in rows]


CLAIM = ClaimStatements()
