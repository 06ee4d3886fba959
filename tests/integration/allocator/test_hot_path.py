"""EnsureActiveVoice's hot path (lease a READY voice) under concurrency, on both
databases; on PostgreSQL that is the batched single-statement path."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from allocator_svc.domain.states import EventReason, VoiceState
from allocator_svc.records import Allocating, Queued, ReadyOutcome, Voice
from allocator_svc.repository import AllocatorRepository, leases
from voiceslot.errors import NotFound

from .conftest import add_voice, at, claim, ensure_params, make_ready


async def test_concurrent_leases_each_get_the_right_answer(repo: AllocatorRepository):
    await repo.upsert_providers([("p", "cartesia", 4)], at(0))
    ready = [await add_voice(repo, f"owner{i}") for i in range(3)]
    allocating = await add_voice(repo, "owner9")
    for v in [*ready, allocating]:
        await repo.ensure_active(ensure_params(v.id), at(0))
    for c in (await claim(repo, at(1), limit=3)).claims:
        await make_ready(repo, c, at(1))
    assert {v.id for v in ready} == {
        v.id for v in ready if (await repo.get_voice(v.id, at(1))).state == VoiceState.READY
    }
    await claim(repo, at(1))  # the fourth voice goes ALLOCATING and stays there

    calls = []
    for i in range(120):
        voice = ready[i % 3]
        if i % 10 == 0:  # someone else's voice, by a user: must look like it does not exist
            calls.append(("stranger", voice.id))
        elif i % 10 == 1:
            calls.append(("owner9", allocating.id))
        else:
            calls.append((voice.owner, voice.id))
    outcomes = await asyncio.gather(
        *(repo.ensure_active(ensure_params(vid, owner=owner), at(2)) for owner, vid in calls),
        return_exceptions=True,
    )
    granted: dict[str, int] = {}
    lease_ids = set()
    for (owner, voice_id), out in zip(calls, outcomes, strict=True):
        if owner == "stranger":
            assert isinstance(out, NotFound)
        elif voice_id == allocating.id:
            assert isinstance(out, Allocating | Queued)
        else:
            assert isinstance(out, ReadyOutcome), out
            assert out.voice.id == voice_id and out.lease.voice_id == voice_id
            assert out.lease.expires_at == at(2) + timedelta(seconds=60)
            assert out.voice.owner == owner and out.voice.provider_voice_id
            granted[voice_id] = granted.get(voice_id, 0) + 1
            lease_ids.add(out.lease.id)
    expected = sum(owner != "stranger" and vid != allocating.id for owner, vid in calls)
    assert len(lease_ids) == sum(granted.values()) == expected
    for voice in ready:
        after = await repo.get_voice(voice.id, at(2))
        assert after.active_leases == granted[voice.id]
        assert after.last_used_at == at(2)
        events = await repo.list_events(voice.id, before_id=None, limit=500)
        assert sum(e.reason == EventReason.LEASED for e in events) == granted[voice.id]


async def test_a_lease_keeps_a_voice_from_reclaim_and_its_expiry_frees_it(
    repo: AllocatorRepository,
):
    await repo.upsert_providers([("p", "cartesia", 1)], at(0))
    voice, waiting = await add_voice(repo, "a"), await add_voice(repo, "b")
    await repo.ensure_active(ensure_params(voice.id), at(0))
    (c,) = (await claim(repo, at(1))).claims
    await make_ready(repo, c, at(1))
    lease = await repo.ensure_active(ensure_params(voice.id), at(2))  # 60 s lease
    assert isinstance(lease, ReadyOutcome) and lease.voice.active_leases == 1
    await repo.ensure_active(ensure_params(waiting.id), at(3))
    assert (await claim(repo, at(61))).reclaims == []
    assert [t.voice_id for t in (await claim(repo, at(62))).reclaims] == [voice.id]
    with pytest.raises(NotFound):
        await repo.renew_lease(lease.lease.id, timedelta(seconds=5), at(63), owner=None)


async def test_a_grant_counts_only_live_leases_and_ends_the_expired_ones(
    repo: AllocatorRepository,
):
    """The grant reports its voice's active leases from the count every lease writer keeps
    (release, the expiry sweep, the grant itself), not by reading them: it deletes the
    voice's expired leases first and records their expiry as the sweeper would."""
    voice = await _one_ready_voice(repo)
    first = await repo.ensure_active(ensure_params(voice.id), at(2))  # until at(62)
    second = await repo.ensure_active(ensure_params(voice.id), at(3))  # until at(63)
    third = await repo.ensure_active(ensure_params(voice.id), at(50))  # until at(110)
    assert isinstance(first, ReadyOutcome) and isinstance(second, ReadyOutcome)
    assert isinstance(third, ReadyOutcome) and third.voice.active_leases == 3
    assert await repo.release_lease(first.lease.id, at(51), owner=None) == "p"
    assert (await repo.get_voice(voice.id, at(51))).active_leases == 2

    # `second` has expired, unswept; the next grant ends it and counts two.
    fourth = await repo.ensure_active(ensure_params(voice.id), at(64))
    assert isinstance(fourth, ReadyOutcome) and fourth.voice.active_leases == 2
    assert fourth.voice.active_leases == (await repo.get_voice(voice.id, at(64))).active_leases
    events = await repo.list_events(voice.id, before_id=None, limit=100)
    assert [e.reason for e in events if e.reason == EventReason.LEASE_EXPIRED] == [
        EventReason.LEASE_EXPIRED
    ]
    with pytest.raises(NotFound):
        await repo.renew_lease(second.lease.id, timedelta(seconds=5), at(64), owner=None)
    assert await repo.expire_leases(at(64)) == []  # nothing left for the sweeper

    # The sweep ends the rest; the count follows (checked after every test, too).
    assert await repo.expire_leases(at(200)) == [voice.id]
    events = await repo.list_events(voice.id, before_id=None, limit=100)
    expiries = [e for e in events if e.reason == EventReason.LEASE_EXPIRED]
    assert len(expiries) == 3  # one by the grant, two by the sweep, recorded alike
    assert len({(e.message, e.from_state, e.to_state) for e in expiries}) == 1
    fifth = await repo.ensure_active(ensure_params(voice.id), at(201))
    assert isinstance(fifth, ReadyOutcome) and fifth.voice.active_leases == 1
    assert await repo.lease_count_drift() == []


async def test_grants_releases_renewals_and_sweeps_at_once_keep_the_lease_count(
    make_repo: Callable[[], AllocatorRepository],
):
    """Every writer of a voice's leases locks the voice first: replicas granting (and so
    ending expired leases), releasing, renewing and sweeping the same voices at once
    neither deadlock nor lose a lease from the count."""
    replicas = [make_repo() for _ in range(3)]
    repo = replicas[0]
    voices = await _ready_voices(repo, 3)
    old = [
        await repo.ensure_active(ensure_params(voices[i % 3].id), at(2)) for i in range(30)
    ]  # all expired by at(100)
    assert all(isinstance(o, ReadyOutcome) for o in old)

    calls: list[Any] = []
    for i in range(90):
        r = replicas[i % 3]
        if i % 9 == 0:
            calls.append(r.expire_leases(at(100)))
        elif i % 3 == 0:
            calls.append(r.release_lease(old[i % 30].lease.id, at(100), owner=None))
        elif i % 3 == 1:
            calls.append(
                r.renew_lease(old[i % 30].lease.id, timedelta(seconds=5), at(100), owner=None)
            )
        else:
            calls.append(r.ensure_active(ensure_params(voices[i % 3].id), at(100)))
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    for out in outcomes:  # renewing an expired lease is NOT_FOUND; nothing else fails
        assert not isinstance(out, Exception) or isinstance(out, NotFound), out
    granted = sum(isinstance(o, ReadyOutcome) for o in outcomes)
    assert granted == 30
    assert await repo.lease_count_drift() == []
    assert sum([(await repo.get_voice(v.id, at(100))).active_leases for v in voices]) == granted


@pytest.mark.postgres
@pytest.mark.parametrize("writer", ["release", "renew", "sweep"])
async def test_a_lease_writer_locks_the_voice_before_the_lease(postgres_url: str, writer: str):
    """The grant locks a voice, then deletes its expired leases. A release or renewal that
    locked its lease first and then waited for the voice would deadlock with it: while
    the voice is locked, they (and the expiry sweep) wait without holding the lease."""
    from sqlalchemy import text

    from allocator_svc.app import migrate
    from voiceslot.db import create_engine, session_factory

    await migrate(postgres_url)
    engine = create_engine(postgres_url)
    repo = AllocatorRepository(session_factory(engine))
    try:
        voice = await _one_ready_voice(repo)
        lease = await repo.ensure_active(ensure_params(voice.id), at(2))
        assert isinstance(lease, ReadyOutcome)
        lease_id = lease.lease.id
        async with engine.connect() as grant:  # stands for a grant holding the voice
            await grant.execute(
                text("SELECT id FROM voices WHERE id = :v FOR UPDATE"), {"v": voice.id}
            )
            call = {
                "release": lambda: repo.release_lease(lease_id, at(3), owner=None),
                "renew": lambda: repo.renew_lease(
                    lease_id, timedelta(seconds=9), at(3), owner=None
                ),
                "sweep": lambda: repo.expire_leases(at(100)),
            }[writer]()
            task = asyncio.create_task(call)
            async with engine.connect() as probe:
                waiting = text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
                for _ in range(200):  # until the writer waits (10 s on a loaded machine)
                    if (await probe.execute(waiting)).scalar_one():
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"{writer} never waited for the voice")
                assert not task.done()
                # The lease itself is free: the grant could delete it.
                await probe.execute(
                    text("SELECT id FROM leases WHERE id = :l FOR UPDATE NOWAIT"), {"l": lease_id}
                )
                await probe.rollback()
            await grant.rollback()
        assert await asyncio.wait_for(task, 10)  # a provider, a lease, a swept voice
        assert await repo.lease_count_drift() == []
    finally:
        await engine.dispose()


async def test_the_sweep_ends_every_expired_lease_a_few_voices_at_a_time(
    repo: AllocatorRepository, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(leases, "SWEEP_VOICES", 2)
    voices = await _ready_voices(repo, 6)
    *expiring, live = voices
    for v in expiring:
        for _ in range(2):
            await repo.ensure_active(ensure_params(v.id), at(2))  # until at(62)
    await repo.ensure_active(ensure_params(live.id), at(50))  # until at(110)

    assert await repo.expire_leases(at(100)) == sorted(v.id for v in expiring)
    assert [(await repo.get_voice(v.id, at(100))).active_leases for v in voices] == [0] * 5 + [1]
    assert await repo.lease_count_drift() == []
    assert await repo.expire_leases(at(100)) == []


async def _ready_voices(repo: AllocatorRepository, n: int) -> list[Voice]:
    """A provider with ``n`` slots, and ``n`` voices of different users READY in them (at
    ``at(1)``)."""
    await repo.upsert_providers([("p", "cartesia", n)], at(0))
    voices = [await add_voice(repo, f"u{i}") for i in range(n)]
    for v in voices:
        await repo.ensure_active(ensure_params(v.id), at(0))
    for c in (await claim(repo, at(1), limit=n)).claims:
        await make_ready(repo, c, at(1))
    return voices


async def _one_ready_voice(repo: AllocatorRepository) -> Voice:
    (voice,) = await _ready_voices(repo, 1)
    return voice


@pytest.mark.postgres
async def test_the_hot_path_survives_its_kept_connection_being_cut(postgres_url: str):
    """The batcher keeps its connections out of the pool; when PostgreSQL drops one (a
    restart, ``pg_terminate_backend``) the next batch fails on use and is retried once on
    a fresh connection: the caller sees a lease, and exactly one is written."""
    from sqlalchemy import text

    from allocator_svc.app import hot_path_engine, migrate
    from voiceslot.db import create_engine, session_factory

    await migrate(postgres_url)
    engine, hot = create_engine(postgres_url), hot_path_engine(postgres_url)
    assert hot is not None
    repo = AllocatorRepository(session_factory(engine), hot_engine=hot)
    try:
        voice = await _one_ready_voice(repo)
        first = await repo.ensure_active(ensure_params(voice.id), at(2))
        assert isinstance(first, ReadyOutcome)
        # Values come back as the ORM's would: UTC-aware moments.
        assert first.voice.created_at.tzinfo is not None
        assert first.voice.last_used_at == at(2)

        async with hot.connect() as admin:
            cut = await admin.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            assert any(cut.scalars())
        second = await repo.ensure_active(ensure_params(voice.id), at(3))
        assert isinstance(second, ReadyOutcome) and second.voice.active_leases == 2
        async with hot.connect() as check:
            written = (
                await check.execute(
                    text("SELECT count(*) FROM leases WHERE id = :id"), {"id": second.lease.id}
                )
            ).scalar_one()
        assert written == 1
    finally:
        await repo.aclose()
        await engine.dispose()
        await hot.dispose()


@pytest.mark.postgres
async def test_a_lease_stuck_behind_a_row_lock_does_not_hold_up_other_voices(
    postgres_url: str,
):
    """One batch in flight is the batcher's rule, but a batch stuck behind a lock (here a
    transaction holding one voice's row) must not make callers of other voices wait for
    it: once it has been out for long, another batch goes."""
    from sqlalchemy import text

    from allocator_svc.app import hot_path_engine, migrate
    from voiceslot.db import create_engine, session_factory

    await migrate(postgres_url)
    engine, hot = create_engine(postgres_url), hot_path_engine(postgres_url)
    repo = AllocatorRepository(session_factory(engine), hot_engine=hot)
    try:
        await repo.upsert_providers([("p", "cartesia", 2)], at(0))
        stuck, free = await add_voice(repo, "a"), await add_voice(repo, "b")
        for v in (stuck, free):
            await repo.ensure_active(ensure_params(v.id), at(0))
        for c in (await claim(repo, at(1), limit=2)).claims:
            await make_ready(repo, c, at(1))
        async with engine.connect() as locker:
            transaction = await locker.begin()
            await locker.execute(
                text("SELECT 1 FROM voices WHERE id = :id FOR UPDATE"), {"id": stuck.id}
            )
            waiting = asyncio.ensure_future(repo.ensure_active(ensure_params(stuck.id), at(2)))
            async with engine.connect() as watch:  # until the lease waits on the lock
                for _ in range(600):
                    waits = (
                        await watch.execute(
                            text(
                                "SELECT count(*) FROM pg_stat_activity "
                                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                            )
                        )
                    ).scalar_one()
                    if waits:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the stuck lease never waited on the lock")
            other = await asyncio.wait_for(
                repo.ensure_active(ensure_params(free.id), at(2)), timeout=30
            )
            assert isinstance(other, ReadyOutcome) and other.voice.id == free.id
            assert not waiting.done()
            await transaction.commit()
        late = await asyncio.wait_for(waiting, timeout=30)
        assert isinstance(late, ReadyOutcome) and late.voice.id == stuck.id
    finally:
        await repo.aclose()
        await engine.dispose()
        if hot is not None:
            await hot.dispose()


def _plan_nodes(plan: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (node type, relation) of an ``EXPLAIN (FORMAT JSON)`` plan."""
    nodes = [(plan["Node Type"], plan.get("Relation Name", ""))]
    for child in plan.get("Plans", []):
        nodes.extend(_plan_nodes(child))
    return nodes


@pytest.mark.postgres
async def test_the_grant_reads_voices_and_leases_by_index_even_while_they_are_small(
    postgres_url: str,
):
    """The grant is prepared once per kept connection, and PostgreSQL keeps the plan it
    made then until the table's statistics change. Planned while the leases table was a
    page (a fresh deployment; autovacuum analyzes it a minute or more later, later still
    while it is busy with big tables), the grant scanned every lease row, expired ones
    included, once per voice it counted, for as long as the plan lived: that halved the
    hot path beside 100,000 voices (bench/README.md). Its connections plan by index."""
    from sqlalchemy import text

    from allocator_svc.app import hot_path_engine, migrate
    from allocator_svc.repository._driver import DriverStatement
    from allocator_svc.repository.leases import GRANT, LeaseAsk
    from voiceslot.db import create_engine, session_factory

    await migrate(postgres_url)
    engine, hot = create_engine(postgres_url), hot_path_engine(postgres_url)
    assert hot is not None
    repo = AllocatorRepository(session_factory(engine), hot_engine=hot)
    try:
        voice = await _one_ready_voice(repo)
        for second in range(2, 6):
            assert isinstance(
                await repo.ensure_active(ensure_params(voice.id), at(second)), ReadyOutcome
            )
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE leases"))
            await conn.execute(text("ANALYZE voices"))

        statement = DriverStatement(GRANT.pg, hot.dialect, bound=GRANT.PG_BOUND)
        ask = LeaseAsk(ensure_params(voice.id), at(6), "ls_explained")
        async with hot.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            explained = await driver.fetchval(
                f"EXPLAIN (FORMAT JSON) {statement.sql}",
                *statement.arguments(GRANT.pg_params([ask])),
            )
        if isinstance(explained, str):  # SQLAlchemy's dialect has asyncpg decode JSON
            explained = json.loads(explained)
        nodes = _plan_nodes(explained[0]["Plan"])
        assert ("Seq Scan", "leases") not in nodes and ("Seq Scan", "voices") not in nodes, nodes
        assert any(relation == "leases" and "Index" in kind for kind, relation in nodes), nodes
    finally:
        await repo.aclose()
        await engine.dispose()
        await hot.dispose()
