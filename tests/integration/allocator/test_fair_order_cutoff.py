"""The fair order read only up to its cut-off key (dispatch's next places, a request's
position) is the whole queue's order: random queues on both databases, with users
holding different numbers of slots, priorities, requests waiting out a retry delay, and
users tied on their turn. The whole order is the same definition (``_fair_queue``) with
no cut-off."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from allocator_svc.models import AllocationRequestRow, AllocationTurnRow, VoiceRow
from allocator_svc.repository import AllocatorRepository
from allocator_svc.repository import queue as queue_module

from .conftest import at

NOW = at(1000)


def voice(voice_id: str, owner: str, state: str) -> VoiceRow:
    return VoiceRow(
        id=voice_id,
        owner=owner,
        display_name="v",
        provider="p",
        language="en",
        state=state,
        generation=1,
        pinned=False,
        sample_key="samples/none.wav",
        sample_sha256="0" * 64,
        sample_bytes=1,
        last_error="",
        created_at=at(0),
        updated_at=at(0),
        state_changed_at=at(0),
    )


async def random_queue(repo: AllocatorRepository, seed: int) -> dict[str, datetime]:
    """Voices held and queued by eight users; returns each queued voice's run_at."""
    rng = random.Random(seed)
    queued: dict[str, datetime] = {}
    turns = [at(10), at(20), at(20)]  # two users served in the same round: a tie
    async with repo._sessions.begin() as s:
        for u in range(8):
            owner = f"u{u}"
            for i in range(rng.randint(0, 4)):
                s.add(voice(f"v_{owner}_held{i}", owner, "ready"))
            for i in range(rng.randint(0, 6)):
                voice_id = f"v_{owner}_q{i}"
                s.add(voice(voice_id, owner, "queued"))
                run_at = (
                    NOW + timedelta(seconds=30) if rng.random() < 0.2 else at(rng.randint(0, 900))
                )
                queued[voice_id] = run_at
                await s.flush()
                s.add(
                    AllocationRequestRow(
                        voice_id=voice_id,
                        owner=owner,
                        provider="p",
                        priority=rng.randint(0, 2),
                        state="queued",
                        attempts=0,
                        run_at=run_at,
                        idempotency_key=f"{voice_id}:q1",
                        last_error="",
                        created_at=at(0),
                        updated_at=at(0),
                    )
                )
            if rng.random() < 0.6:
                s.add(
                    AllocationTurnRow(provider="p", owner=owner, last_claimed_at=rng.choice(turns))
                )
    return queued


async def whole_order(repo: AllocatorRepository, s: AsyncSession, due_by: datetime) -> list[str]:
    """Voice ids in the order of the whole queue due by ``due_by``."""
    order = repo._fair_queue("p", due_by, cutoff=10**9)
    q = (
        select(AllocationRequestRow.voice_id)
        .join(order, order.c.id == AllocationRequestRow.id)
        .order_by(order.c.place)
    )
    return list((await s.execute(q)).scalars())


@pytest.mark.parametrize("page", [2, queue_module._STANDING_PAGE])
@pytest.mark.parametrize("seed", range(4))
async def test_next_places_and_positions_are_the_whole_queues(
    repo: AllocatorRepository, seed: int, page: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Users are read a page at a time until the cut-off is settled: tiny pages read many.
    monkeypatch.setattr(queue_module, "_STANDING_PAGE", page)
    queued = await random_queue(repo, seed)
    async with repo._sessions() as s:
        whole = await whole_order(repo, s, NOW)
        assert set(whole) == {v for v, run_at in queued.items() if run_at <= NOW}
        by_id = dict(
            (await s.execute(select(AllocationRequestRow.id, AllocationRequestRow.voice_id))).all()
        )
        for n in range(1, len(whole) + 2):
            assert [by_id[i] for i in await repo._fair_order(s, "p", NOW, n)] == whole[:n]
        for voice_id, run_at in queued.items():
            order = whole if run_at <= NOW else await whole_order(repo, s, run_at)
            position = await repo._queue_position(s, voice_id, "p", NOW)
            assert position == order.index(voice_id) + 1, voice_id
