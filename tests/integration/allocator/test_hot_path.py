"""EnsureActiveVoice's hot path (lease a READY voice) under concurrency, on both
databases; on PostgreSQL that is the batched single-statement path."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest

from allocator_svc.domain.states import EventReason, VoiceState
from allocator_svc.records import Allocating, Queued, ReadyOutcome, Voice
from allocator_svc.repository import AllocatorRepository
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


async def _one_ready_voice(repo: AllocatorRepository) -> Voice:
    """A provider with one slot, and a voice READY in it (at ``at(1)``)."""
    await repo.upsert_providers([("p", "cartesia", 1)], at(0))
    voice = await add_voice(repo, "a")
    await repo.ensure_active(ensure_params(voice.id), at(0))
    (c,) = (await claim(repo, at(1))).claims
    await make_ready(repo, c, at(1))
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
