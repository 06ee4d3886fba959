"""The adaptive reclaim policy through ``AllocatorRepository`` on both databases: the
lease grant keeps each voice's use statistics exactly as ``domain.usage.observe`` says,
the reclaim decision ranks voices by them (not by recency alone), and a request waits
for a live session to end, but no longer than the bound."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from allocator_svc.domain.adaptive import Adaptive
from allocator_svc.domain.states import EventReason
from allocator_svc.domain.usage import VoiceUsage, observe
from allocator_svc.models import VoiceRow
from allocator_svc.repository import AllocatorRepository
from allocator_svc.repository.slots import usage_of

from .conftest import add_voice, at, claim, ensure_params, make_ready
from .test_reclaim import fill, use

ADAPTIVE = Adaptive(min_residency=timedelta(0), max_wait_s=30.0)


async def usage(repo: AllocatorRepository, voice_id: str) -> VoiceUsage:
    async with repo._sessions() as s:
        row = (await s.execute(select(VoiceRow).where(VoiceRow.id == voice_id))).scalar_one()
        return usage_of(row)


async def test_each_lease_grant_moves_the_statistics_as_the_domain_rule_says(
    repo: AllocatorRepository,
):
    (voice,) = await fill(repo, 1)
    times = [100.0, 110.0, 125.5, 126.0, 400.0, 405.0, 9_000.0, 9_030.0, 90_000.0]
    expected = VoiceUsage()
    last: float | None = None
    for t in times:
        await use(repo, voice, t)  # grant at t, release at t: last_used_at = t
        expected = observe(expected, last, at(t).timestamp(), created_at=at(0).timestamp())
        last = at(t).timestamp()
    got = await usage(repo, voice.id)
    assert (
        (got.requests, got.continued, got.burst, got.sessions)
        == (
            expected.requests,
            expected.continued,
            expected.burst,
            expected.sessions,
        )
        == (9, 5, 1, 3)
    )
    assert got.freq == pytest.approx(expected.freq, rel=1e-6)
    assert got.gap_sum == pytest.approx(expected.gap_sum, rel=1e-6)
    assert got.expected == pytest.approx(expected.expected, rel=1e-6)
    assert got.expected > 0  # the starts after long gaps were counted


async def test_a_rarely_used_voice_goes_before_a_popular_one_used_less_recently(
    repo: AllocatorRepository,
):
    popular, rare = await fill(repo, 2)
    for k in range(30):
        await use(repo, popular, 100.0 + 90 * k)  # every 90 s: no session, a high rate
    await use(repo, rare, 2_800.0)  # once, after popular's latest use
    waiting = await add_voice(repo, "newcomer")
    await repo.ensure_active(ensure_params(waiting.id), at(2_900))

    result = await claim(repo, at(2_901), reclaim_policy=ADAPTIVE)
    assert [t.voice_id for t in result.reclaims] == [rare.id]


async def test_a_request_waits_for_a_live_session_then_evicts_at_the_bound(
    repo: AllocatorRepository,
):
    (talker,) = await fill(repo, 1)
    # The provider's history: sessions of ten requests 5 s apart.
    for session in range(6):
        for k in range(10):
            await use(repo, talker, 1_000.0 * (session + 1) + 5 * k)
    await use(repo, talker, 10_000.0)
    await use(repo, talker, 10_005.0)  # a new session is under way
    waiting = await add_voice(repo, "newcomer")
    await repo.ensure_active(ensure_params(waiting.id), at(10_006))

    assert (await claim(repo, at(10_007), reclaim_policy=ADAPTIVE)).reclaims == []
    # The user keeps speaking while the newcomer waits: the session stays live...
    for t in (10_010.0, 10_015.0, 10_020.0, 10_025.0, 10_030.0):
        await use(repo, talker, t)
        assert (await claim(repo, at(t + 1), reclaim_policy=ADAPTIVE)).reclaims == []
    # ...but the wait is bounded: 30 s after the newcomer came, the talker goes.
    result = await claim(repo, at(10_006 + 30), reclaim_policy=ADAPTIVE)
    assert [t.voice_id for t in result.reclaims] == [talker.id]


async def test_a_session_that_went_quiet_is_evicted_without_waiting_out_the_bound(
    repo: AllocatorRepository,
):
    (talker,) = await fill(repo, 1)
    for session in range(6):
        for k in range(10):
            await use(repo, talker, 1_000.0 * (session + 1) + 5 * k)
    await use(repo, talker, 10_000.0)
    waiting = await add_voice(repo, "newcomer")
    await repo.ensure_active(ensure_params(waiting.id), at(10_001))
    assert (await claim(repo, at(10_002), reclaim_policy=ADAPTIVE)).reclaims == []
    # Sessions here pause ~5 s between requests: 20 s of silence means it is over.
    result = await claim(repo, at(10_020), reclaim_policy=ADAPTIVE)
    assert [t.voice_id for t in result.reclaims] == [talker.id]


async def test_the_gap_between_two_requests_spans_a_clone_between_them(
    repo: AllocatorRepository,
):
    (voice,) = await fill(repo, 1)
    await use(repo, voice, 100.0)
    target = await repo.begin_reclaim(
        voice.id, EventReason.RECLAIMED_BY_ADMIN, at(101), force=False
    )
    await repo.finish_reclaim(target, at(102), deleted=True)
    # Asked for again at 110: queued, cloned, READY at 130 (which moves last_used_at).
    await repo.ensure_active(ensure_params(voice.id), at(110))
    (c,) = (await claim(repo, at(111))).claims
    await make_ready(repo, c, at(130))
    await use(repo, voice, 131.0)
    got = await usage(repo, voice.id)
    # 31 s after the previous request: within the session gap, and the gap is 31 s, not
    # the 1 s since the clone completed.
    assert (got.requests, got.continued) == (2, 1)
    assert got.gap_sum == pytest.approx(31.0, abs=1e-3)  # SQLite: julianday arithmetic
