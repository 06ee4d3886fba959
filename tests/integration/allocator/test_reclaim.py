"""Reclaim for backlog, LRU, through ``AllocatorRepository.claim`` on both databases: a
slot is taken from a ready voice only when someone is waiting, and never from one that
is leased, pinned or only just became ready."""

from __future__ import annotations

from datetime import timedelta

from allocator_svc.domain.reclaim import LeastRecentlyUsed
from allocator_svc.domain.states import EventReason, VoiceState
from allocator_svc.records import ReadyOutcome, Voice
from allocator_svc.repository import AllocatorRepository

from .conftest import add_voice, at, claim, ensure_params, make_ready


async def fill(repo: AllocatorRepository, n: int, *, t: float = 1) -> list[Voice]:
    """``n`` READY voices of distinct users at provider "p" (capacity ``n``)."""
    await repo.upsert_providers([("p", "cartesia", n)], at(0))
    voices = [await add_voice(repo, f"holder{i}") for i in range(n)]
    for v in voices:
        await repo.ensure_active(ensure_params(v.id), at(0))
    result = await claim(repo, at(t))
    assert len(result.claims) == n
    for c in result.claims:
        await make_ready(repo, c, at(t))
    return voices


async def use(repo: AllocatorRepository, voice: Voice, t: float, *, release: bool = True) -> str:
    out = await repo.ensure_active(ensure_params(voice.id), at(t))
    assert isinstance(out, ReadyOutcome)
    if release:
        await repo.release_lease(out.lease.id, at(t), owner=None)
    return out.lease.id


async def test_no_backlog_no_reclaim_however_idle(repo: AllocatorRepository):
    await fill(repo, 2)
    result = await claim(repo, at(100_000))
    assert result.claims == [] and result.reclaims == []


async def test_backlog_reclaims_the_least_recently_used_one_per_waiting_request(
    repo: AllocatorRepository,
):
    a, b, c = await fill(repo, 3)
    await use(repo, a, 50)
    await use(repo, b, 30)  # b: least recently used
    await use(repo, c, 40)
    waiting = await add_voice(repo, "newcomer")
    await repo.ensure_active(ensure_params(waiting.id), at(60))

    result = await claim(repo, at(61))
    assert result.claims == []
    assert [t.voice_id for t in result.reclaims] == [b.id]
    assert result.reclaims[0].reason == EventReason.RECLAIMED_FOR_BACKLOG
    assert (await repo.get_voice(b.id, at(61))).state == VoiceState.RECLAIMING
    # The slot is still held until the remote copy is gone: nobody may clone into it.
    assert (await claim(repo, at(62))).claims == []

    await repo.finish_reclaim(result.reclaims[0], at(63), deleted=True)
    freed = await repo.get_voice(b.id, at(63))
    assert freed.state == VoiceState.IDLE and freed.provider_voice_id is None
    assert [x.voice_id for x in (await claim(repo, at(64))).claims] == [waiting.id]


async def test_leased_pinned_and_fresh_voices_are_never_taken(repo: AllocatorRepository):
    leased, pinned, fresh = await fill(repo, 3, t=1)
    await use(repo, leased, 2, release=False)  # a 60 s lease, active until 62
    await repo.set_pinned(pinned.id, True, at(2))
    await use(repo, fresh, 20)
    waiting = await add_voice(repo, "newcomer")
    await repo.ensure_active(ensure_params(waiting.id), at(21))
    residency = LeastRecentlyUsed(min_residency=timedelta(seconds=30))

    # fresh became ready at 1: within its residency until 31.
    assert (await claim(repo, at(25), reclaim_policy=residency)).reclaims == []
    # Past the residency, only fresh may go; the lease and the pin keep the others.
    result = await claim(repo, at(40), reclaim_policy=residency)
    assert [t.voice_id for t in result.reclaims] == [fresh.id]


async def test_a_failed_delete_gives_the_voice_its_slot_back(repo: AllocatorRepository):
    (voice,) = await fill(repo, 1)
    waiting = await add_voice(repo, "newcomer")
    await repo.ensure_active(ensure_params(waiting.id), at(10))
    (target,) = (await claim(repo, at(11))).reclaims
    await repo.finish_reclaim(target, at(12), deleted=False, error="Transient: 503")
    back = await repo.get_voice(voice.id, at(12))
    assert back.state == VoiceState.READY
    assert back.provider_voice_id == target.provider_voice_id
    assert "503" in back.last_error


async def test_a_stale_reclaim_finish_cannot_touch_a_newer_copy(repo: AllocatorRepository):
    (voice,) = await fill(repo, 1)
    target = await repo.begin_reclaim(voice.id, EventReason.RECLAIMED_BY_ADMIN, at(5), force=False)
    await repo.finish_reclaim(target, at(6), deleted=True)
    # The voice comes back with a new remote copy, and is being reclaimed again...
    await repo.ensure_active(ensure_params(voice.id), at(7))
    (c,) = (await claim(repo, at(8))).claims
    await make_ready(repo, c, at(8))
    await repo.begin_reclaim(voice.id, EventReason.RECLAIMED_BY_ADMIN, at(9), force=False)
    # ...when a late answer about the old copy arrives: it changes nothing.
    await repo.finish_reclaim(target, at(10), deleted=True)
    now = await repo.get_voice(voice.id, at(10))
    assert now.state == VoiceState.RECLAIMING
    assert now.provider_voice_id == f"remote-{voice.id}-{c.generation}"


async def test_stuck_reclaims_are_found_only_past_the_timeout(repo: AllocatorRepository):
    (voice,) = await fill(repo, 1)
    await repo.begin_reclaim(voice.id, EventReason.RECLAIMED_BY_ADMIN, at(5), force=False)
    assert await repo.stuck_reclaims(at(4)) == []
    (stuck,) = await repo.stuck_reclaims(at(5))
    assert stuck.voice_id == voice.id and stuck.reason == EventReason.STUCK_RESET
