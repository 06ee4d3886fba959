"""A database that cannot serve us just now is UNAVAILABLE to the caller (retry), never
INTERNAL (a bug): the fault schedules cut PostgreSQL connections with
``pg_terminate_backend`` and saw INTERNAL answers before this rule existed."""

from __future__ import annotations

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
