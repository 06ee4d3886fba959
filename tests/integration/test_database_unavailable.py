"""A database that cannot serve us just now is UNAVAILABLE to the caller (retry), never
INTERNAL (a bug): the fault schedules cut PostgreSQL connections with
``pg_terminate_backend`` and saw INTERNAL answers before this rule existed."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from sqlalchemy import text

from voiceslot.db import create_engine, is_database_unavailable
from voiceslot.rpc.status import to_rpc_status

pytestmark = pytest.mark.postgres


async def test_a_connection_terminated_mid_session_is_unavailable(postgres_url: str):
    engine = create_engine(postgres_url)
    try:
        async with engine.connect() as victim:
            pid = (await victim.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            async with engine.connect() as admin:
                await admin.execute(text(f"SELECT pg_terminate_backend({int(pid)})"))
            with pytest.raises(Exception) as caught:
                await victim.execute(text("SELECT 1"))
        assert is_database_unavailable(caught.value), repr(caught.value)
        assert to_rpc_status(caught.value).code == grpc.StatusCode.UNAVAILABLE
    finally:
        await engine.dispose()


async def test_a_wrong_statement_stays_internal(postgres_url: str):
    engine = create_engine(postgres_url)
    try:
        with pytest.raises(Exception) as caught:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1 / 0"))
        assert not is_database_unavailable(caught.value)
        assert to_rpc_status(caught.value).code == grpc.StatusCode.INTERNAL
    finally:
        await engine.dispose()


async def test_a_deadlock_is_aborted_for_a_retry(postgres_url: str):
    """PostgreSQL aborts one of two transactions that lock rows in opposite orders (the
    fault schedules met one deleting a voice): ABORTED, which says "retry", not INTERNAL."""
    engine = create_engine(postgres_url)
    try:
        async with engine.begin() as setup:
            await setup.execute(text("CREATE TABLE t (id int PRIMARY KEY)"))
            await setup.execute(text("INSERT INTO t VALUES (1), (2)"))
        both_hold_one = asyncio.Barrier(2)

        async def lock(first: int, second: int) -> None:
            async with engine.begin() as conn:
                await conn.execute(text("SELECT 1 FROM t WHERE id = :i FOR UPDATE"), {"i": first})
                await both_hold_one.wait()
                await conn.execute(text("SELECT 1 FROM t WHERE id = :i FOR UPDATE"), {"i": second})

        outcomes = await asyncio.gather(lock(1, 2), lock(2, 1), return_exceptions=True)
        (deadlocked,) = [o for o in outcomes if isinstance(o, BaseException)]
        assert to_rpc_status(deadlocked).code == grpc.StatusCode.ABORTED, repr(deadlocked)
    finally:
        await engine.dispose()


async def test_the_drivers_own_errors_are_classified_alike(postgres_url: str):
    """The allocator's hot path runs statements on asyncpg's own connection, whose errors
    arrive unwrapped: a cut connection is UNAVAILABLE, a wrong statement INTERNAL."""
    import asyncpg

    dsn = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    victim, admin = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        with pytest.raises(Exception) as wrong:
            await victim.fetch("SELECT 1 / 0")
        assert to_rpc_status(wrong.value).code == grpc.StatusCode.INTERNAL
        await admin.execute("SELECT pg_terminate_backend($1)", victim.get_server_pid())
        with pytest.raises(Exception) as cut:
            await victim.fetch("SELECT 1")
        assert is_database_unavailable(cut.value), repr(cut.value)
        assert to_rpc_status(cut.value).code == grpc.StatusCode.UNAVAILABLE
    finally:
        await admin.close()
        victim.terminate()
