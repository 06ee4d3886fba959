"""Synthesizer replicas that start together on one PostgreSQL database: each runs the
migrations at start, and none may fail for it (concurrent ``CREATE TABLE`` of one table
collides in PostgreSQL's catalog unless the replicas take turns)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from synth_svc.app import VERSION_TABLE, migrate
from voiceslot.db import create_engine


@pytest.mark.postgres
async def test_replicas_migrating_at_once_all_succeed(postgres_url: str) -> None:
    # Without turns they fail or deadlock in the catalog: bounded, so that fails too.
    results = await asyncio.wait_for(
        asyncio.gather(*(migrate(postgres_url) for _ in range(4)), return_exceptions=True),
        timeout=60,
    )
    assert [r for r in results if isinstance(r, BaseException)] == []
    engine = create_engine(postgres_url)
    try:
        async with engine.connect() as conn:
            versions = (await conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))).all()
            columns = (
                await conn.execute(
                    text(
                        "SELECT column_name FROM information_schema.columns "
                        "WHERE table_name = 'batch_items'"
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    assert versions == [("s0002",)]
    assert ("claimed_by",) in columns
