"""EnsureActiveVoice's answers for a voice that is not ready tell the truth: ``position``
is the voice's place in the order the dispatcher really serves (the fair order, not
request age), and ``estimated_wait`` comes from clone durations measured at the provider.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from allocator_svc.domain.states import EventReason
from allocator_svc.records import Allocating, Queued, ReclaimTarget
from allocator_svc.repository import AllocatorRepository

from .conftest import add_voice, at, claim, ensure_params


async def test_position_is_the_place_in_the_order_the_dispatcher_serves(
    repo: AllocatorRepository,
):
    await repo.upsert_providers([("p", "cartesia", 0)], at(0))  # full: nothing is served
    big = [await add_voice(repo, "big") for _ in range(3)]
    small = [await add_voice(repo, owner) for owner in ("a", "b")]
    voices = [*big, *small]  # enqueued oldest first: big's three, then a's and b's
    for v in voices:
        await repo.ensure_active(ensure_params(v.id), at(1))
    positions = {}
    for v in voices:
        out = await repo.ensure_active(ensure_params(v.id), at(2))
        assert isinstance(out, Queued)
        positions[v.id] = out.position
    # Every user's first request before anyone's second: big1, a, b, big2, big3.
    expected = [big[0], small[0], small[1], big[1], big[2]]
    assert [positions[v.id] for v in expected] == [1, 2, 3, 4, 5]
    # And that is the order the dispatcher takes them in once slots free up.
    await repo.upsert_providers([("p", "cartesia", 5)], at(3))
    claimed = (await claim(repo, at(3), limit=5)).claims
    assert [c.voice_id for c in claimed] == [v.id for v in expected]


async def test_estimated_wait_comes_from_measured_clone_durations(repo: AllocatorRepository):
    await repo.upsert_providers([("p", "cartesia", 1)], at(0))
    first, second, waiting = [await add_voice(repo, o) for o in ("x", "y", "z")]
    guess = ensure_params(waiting.id).mean_allocation_s

    await repo.ensure_active(ensure_params(first.id), at(0))
    (c,) = (await claim(repo, at(0))).claims
    in_flight = await repo.ensure_active(ensure_params(first.id), at(0.5))
    assert isinstance(in_flight, Allocating)
    assert in_flight.estimated_wait_s == pytest.approx(guess - 0.5)  # nothing measured yet
    assert await repo.complete_allocation(c, "r1", at(8), adopted=False, clone_seconds=8.0)

    await repo.finish_reclaim(await _reclaim(repo, first.id, at(20)), at(20), deleted=True)
    await repo.ensure_active(ensure_params(second.id), at(20))
    (c,) = (await claim(repo, at(20))).claims
    assert await repo.complete_allocation(c, "r2", at(38), adopted=False, clone_seconds=18.0)

    out = await repo.ensure_active(ensure_params(waiting.id), at(40))
    assert isinstance(out, Queued) and out.position == 1
    # The mean moved a fifth of the way from 8 s towards 18 s; one slot: one wave.
    assert out.estimated_wait_s == pytest.approx(10.0)
    assert out.estimated_wait_s != guess


async def _reclaim(repo: AllocatorRepository, voice_id: str, now: datetime) -> ReclaimTarget:
    return await repo.begin_reclaim(voice_id, EventReason.RECLAIMED_BY_ADMIN, now, force=True)


async def test_the_backlog_counts_the_requests_due_and_none_waiting_out_a_retry_delay(
    repo: AllocatorRepository,
):
    """What a full account's rounds weigh reclaims for: requests due now. While every
    request waits out a retry delay the backlog is empty (and is found so without
    counting them); each counts from its ``run_at`` on."""
    from sqlalchemy import update

    from allocator_svc.models import AllocationRequestRow

    await repo.upsert_providers([("p", "cartesia", 0)], at(0))
    voices = [await add_voice(repo, owner) for owner in ("a", "a", "b")]
    for v in voices:
        await repo.ensure_active(ensure_params(v.id), at(1))
    assert await repo.backlog("p", at(2)) == 3
    async with repo._sessions.begin() as s:  # as a failed attempt's retry delay leaves them
        for i, v in enumerate(voices):
            await s.execute(
                update(AllocationRequestRow)
                .where(AllocationRequestRow.voice_id == v.id)
                .values(run_at=at(100 + 10 * i))
            )
    assert await repo.backlog("p", at(2)) == 0
    assert await repo.backlog("p", at(100)) == 1
    assert await repo.backlog("p", at(115)) == 2
    assert await repo.backlog("p", at(120)) == 3
    assert (await claim(repo, at(2))).reclaims == []
