"""SQLite under contention: writers in one process queue fairly, none fails.

Every transaction on SQLite takes the write lock (BEGIN IMMEDIATE). When each waited in
SQLite's busy handler, whose backoff polling favours newcomers, a waiter could lose for
the whole busy timeout on a loaded machine and fail with "database is locked" (seen as
INTERNAL in the allocator's concurrency test). Here more work queues up than the busy
timeout lasts; every transaction must still commit, in arrival order.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from voiceslot.db import SQLITE_BUSY_TIMEOUT_S, create_engine

HOLD_S = 0.1


async def test_writers_queued_past_the_busy_timeout_all_commit_in_order(tmp_path: Path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'contended.sqlite3'}")
    writers = int(SQLITE_BUSY_TIMEOUT_S * 1.3 / HOLD_S)  # the queue outlasts the busy timeout
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE log (n INTEGER NOT NULL)"))

        async def write(n: int) -> None:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO log (n) VALUES (:n)"), {"n": n})
                await asyncio.sleep(HOLD_S)  # a slow event loop, as on a loaded machine

        tasks = []
        for n in range(writers):
            tasks.append(asyncio.create_task(write(n)))
            await asyncio.sleep(0)  # arrive one after the other
        results = await asyncio.gather(*tasks, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert not failures, f"{len(failures)} of {writers} writers failed: {failures[0]!r}"

        async with engine.connect() as conn:
            order = [n for (n,) in await conn.execute(text("SELECT n FROM log ORDER BY rowid"))]
        assert order == list(range(writers)), "writers are served in arrival order"
    finally:
        await engine.dispose()
