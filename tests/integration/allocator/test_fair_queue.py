"""Fair dispatch through ``AllocatorRepository.claim``, on SQLite and PostgreSQL: who gets
the next freed slot when users want more than the provider holds."""

from __future__ import annotations

from allocator_svc.domain.states import VoiceState
from allocator_svc.records import ReadyOutcome
from allocator_svc.repository import AllocatorRepository

from .conftest import add_voice, at, claim, ensure_params, make_ready


async def use_once(repo: AllocatorRepository, voice_id: str, now) -> None:
    """The owner leases its ready voice, uses it, lets it go."""
    out = await repo.ensure_active(ensure_params(voice_id), now)
    assert isinstance(out, ReadyOutcome)
    await repo.release_lease(out.lease.id, now, owner=None)


async def test_one_users_500_voices_do_not_delay_ten_others(repo: AllocatorRepository):
    await repo.upsert_providers([("p", "cartesia", 3)], at(0))
    big = {(await add_voice(repo, "big")).id for _ in range(500)}
    for voice_id in sorted(big):
        await repo.ensure_active(ensure_params(voice_id), at(0))
    first = await claim(repo, at(1))
    assert len(first.claims) == 3 and {c.voice_id for c in first.claims} <= big
    for c in first.claims:
        await make_ready(repo, c, at(1))
    small = {(await add_voice(repo, f"user{i}")).id for i in range(10)}
    for voice_id in sorted(small):
        await repo.ensure_active(ensure_params(voice_id), at(2))

    served: list[str] = []  # who got each slot freed after the ten joined the queue
    freed = 0
    t = 3
    while not small <= set(served):
        assert t < 60, f"the ten were not all served: {served}"
        result = await claim(repo, at(t))
        for target in result.reclaims:
            await repo.finish_reclaim(target, at(t), deleted=True)
            freed += 1
        for c in result.claims:
            served.append(c.voice_id)
            await make_ready(repo, c, at(t))
            await use_once(repo, c.voice_id, at(t))
        t += 1

    # The first ten slots freed went to the ten users, none to the 500-voice user, even
    # though every one of its requests is older than theirs.
    assert set(served[:10]) == small
    assert freed <= 12  # slots free up three at a time: the tenth went in the fourth wave
    queued = (await repo.provider_stats(at(t), name="p"))[0].queued
    assert queued == 500 - 3 - (len(served) - 10)


async def test_users_holding_fewer_slots_go_first(repo: AllocatorRepository):
    await repo.upsert_providers([("p", "cartesia", 4)], at(0))
    rich = [await add_voice(repo, "rich") for _ in range(4)]
    poor = [await add_voice(repo, "poor") for _ in range(2)]
    for v in rich[:2]:
        await repo.ensure_active(ensure_params(v.id), at(0))
    for c in (await claim(repo, at(1))).claims:
        await make_ready(repo, c, at(1))
    # rich holds 2 of 4 slots; both users now queue two more, rich first.
    for v in rich[2:] + poor:
        await repo.ensure_active(ensure_params(v.id), at(2))
    result = await claim(repo, at(3))
    assert sorted(c.voice_id for c in result.claims) == sorted(v.id for v in poor)


async def test_every_users_first_request_goes_before_anyones_second(repo: AllocatorRepository):
    await repo.upsert_providers([("p", "cartesia", 3)], at(0))
    a = [await add_voice(repo, "a") for _ in range(3)]
    b = [await add_voice(repo, "b") for _ in range(3)]
    c = [await add_voice(repo, "c") for _ in range(3)]
    for v in a + b + c:  # a's requests are all older than b's and c's
        await repo.ensure_active(ensure_params(v.id), at(0))
    result = await claim(repo, at(1))
    assert sorted(x.voice_id for x in result.claims) == sorted([a[0].id, b[0].id, c[0].id])


async def test_priority_orders_one_users_own_requests(repo: AllocatorRepository):
    await repo.upsert_providers([("p", "cartesia", 1)], at(0))
    low, high = await add_voice(repo, "u"), await add_voice(repo, "u")
    await repo.ensure_active(ensure_params(low.id, priority=0), at(0))
    await repo.ensure_active(ensure_params(high.id, priority=9), at(0))
    result = await claim(repo, at(1))
    assert [c.voice_id for c in result.claims] == [high.id]


async def test_claims_never_exceed_capacity_or_take_requests_not_yet_due(
    repo: AllocatorRepository,
):
    await repo.upsert_providers([("p", "cartesia", 2)], at(0))
    voices = [await add_voice(repo, f"u{i}") for i in range(5)]
    for v in voices:
        await repo.ensure_active(ensure_params(v.id), at(10))
    assert (await claim(repo, at(5))).claims == []  # enqueued at 10: not due at 5
    first = await claim(repo, at(10))
    assert len(first.claims) == 2
    assert (await claim(repo, at(11))).claims == []  # both slots held (ALLOCATING)
    states = {(await repo.get_voice(c.voice_id, at(11))).state for c in first.claims}
    assert states == {VoiceState.ALLOCATING}
