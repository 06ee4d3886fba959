"""Migrations as a step of their own (``voiceslot migrate``, the Helm chart's Job) and
services that, with ``migrate_on_start`` off, wait for the schema instead of migrating:
against real PostgreSQL, where the chart runs them."""

from __future__ import annotations

import asyncio

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.engine import make_url

from allocator_svc import app as allocator_app
from synth_svc import app as synth_app
from voiceslot.cli.main import cli
from voiceslot.config import Settings
from voiceslot.db import (
    SchemaNotReady,
    create_engine,
    prepare_schema,
    schema_status,
    upgrade_to_head,
    wait_for_schema,
)

pytestmark = pytest.mark.postgres

ALLOCATOR = {
    "script_location": allocator_app.MIGRATIONS,
    "version_table": allocator_app.VERSION_TABLE,
}
SYNTH = {"script_location": synth_app.MIGRATIONS, "version_table": synth_app.VERSION_TABLE}


async def _versions(url: str) -> dict[str, list[str]]:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            found = {}
            for table in (allocator_app.VERSION_TABLE, synth_app.VERSION_TABLE):
                rows = await conn.execute(text(f"SELECT version_num FROM {table}"))
                found[table] = [r[0] for r in rows]
            return found
    finally:
        await engine.dispose()


async def _set_version(url: str, table: str, revision: str) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"UPDATE {table} SET version_num = :r"), {"r": revision})
    finally:
        await engine.dispose()


def _head(script_location) -> str:
    from alembic.script import ScriptDirectory

    from voiceslot.db import alembic_config

    return ScriptDirectory.from_config(
        alembic_config(script_location, "sqlite://", version_table="x")
    ).get_current_head()


async def test_migrate_command_brings_both_services_to_head(postgres_url: str, tmp_path) -> None:
    """Both services in one database (the chart's default when synthUrl is empty)."""
    env = {
        "VOICESLOT_DATA_DIR": str(tmp_path),
        "VOICESLOT_ALLOCATOR__DATABASE_URL": postgres_url,
        "VOICESLOT_SYNTH__DATABASE_URL": postgres_url,
        "VOICESLOT_CONFIG": None,
    }
    for _ in range(2):  # a second run (the next upgrade with no new migration) is a no-op
        result = await asyncio.to_thread(CliRunner().invoke, cli, ["migrate"], env=env)
        assert result.exit_code == 0, result.output
        assert "allocator: schema at head" in result.output
        assert "synth: schema at head" in result.output
    assert await _versions(postgres_url) == {
        allocator_app.VERSION_TABLE: [_head(allocator_app.MIGRATIONS)],
        synth_app.VERSION_TABLE: [_head(synth_app.MIGRATIONS)],
    }
    assert await schema_status(url=postgres_url, **ALLOCATOR) is None
    assert await schema_status(url=postgres_url, **SYNTH) is None


async def test_migrate_command_hides_the_password(postgres_url: str, tmp_path) -> None:
    # Trust authentication here accepts any password; the Job's log must not show it.
    url = make_url(postgres_url).set(password="s3cret-pw").render_as_string(hide_password=False)
    env = {
        "VOICESLOT_DATA_DIR": str(tmp_path),
        "VOICESLOT_ALLOCATOR__DATABASE_URL": url,
        "VOICESLOT_CONFIG": None,
    }
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, ["migrate", "--only", "allocator"], env=env
    )
    assert result.exit_code == 0, result.output
    assert "s3cret-pw" not in result.output
    assert "synth" not in result.output


async def test_waiting_fails_clearly_when_nothing_migrates(postgres_url: str, caplog) -> None:
    with pytest.raises(SchemaNotReady) as info:
        await wait_for_schema(url=postgres_url, timeout_s=0.5, poll_s=0.1, **ALLOCATOR)
    message = str(info.value)
    assert "voiceslot migrate" in message
    assert "is at nothing" in message and _head(allocator_app.MIGRATIONS) in message
    # One log line says what it waits for, not one per poll.
    waiting = [r for r in caplog.records if "waiting up to" in r.getMessage()]
    assert len(waiting) == 1
    # Waiting never migrates.
    engine = create_engine(postgres_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            tables = await conn.execute(
                text("SELECT count(*) FROM information_schema.tables WHERE table_schema='public'")
            )
            assert tables.scalar() == 0
    finally:
        await engine.dispose()


async def test_waiting_ends_when_the_migration_step_finishes(postgres_url: str) -> None:
    waiter = asyncio.create_task(
        wait_for_schema(url=postgres_url, timeout_s=60, poll_s=0.1, **SYNTH)
    )
    await asyncio.sleep(0.5)
    assert not waiter.done()
    await upgrade_to_head(url=postgres_url, **SYNTH)
    await asyncio.wait_for(waiter, timeout=30)


async def test_an_older_schema_is_waited_for_and_a_newer_one_accepted(postgres_url: str) -> None:
    await upgrade_to_head(url=postgres_url, **ALLOCATOR)
    # Older (a known revision before head): the new code waits for the migration step.
    await _set_version(postgres_url, allocator_app.VERSION_TABLE, "a0001")
    reason = await schema_status(url=postgres_url, **ALLOCATOR)
    assert reason and "a0001" in reason
    # Newer (a revision this code does not know: a later release migrated, then a
    # rollback brought this code back): it serves, as expand/contract migrations allow.
    await _set_version(postgres_url, allocator_app.VERSION_TABLE, "a9999_from_the_future")
    assert await schema_status(url=postgres_url, **ALLOCATOR) is None


async def test_prepare_schema_follows_migrate_on_start(postgres_url: str) -> None:
    assert Settings().migrate_on_start is True, "the embedded default migrates on start"
    with pytest.raises(SchemaNotReady):
        await prepare_schema(url=postgres_url, migrate=False, wait_s=0.2, **ALLOCATOR)
    await prepare_schema(url=postgres_url, migrate=True, wait_s=0.2, **ALLOCATOR)
    await prepare_schema(url=postgres_url, migrate=False, wait_s=0.2, **ALLOCATOR)


async def test_an_unreachable_database_is_not_ready() -> None:
    url = "postgresql+asyncpg://nobody@127.0.0.1:1/none"
    with pytest.raises(SchemaNotReady, match="not reachable"):
        await wait_for_schema(url=url, timeout_s=0.3, poll_s=0.1, **ALLOCATOR)


def test_migrate_on_start_is_an_environment_setting(monkeypatch) -> None:
    monkeypatch.setenv("VOICESLOT_MIGRATE_ON_START", "false")
    monkeypatch.setenv("VOICESLOT_SCHEMA_WAIT_S", "42")
    settings = Settings()
    assert settings.migrate_on_start is False
    assert settings.schema_wait_s == 42


async def test_services_built_with_migrate_on_start_off_wait_for_the_step(
    postgres_url: str, make_settings, tmp_path
) -> None:
    """The services' own start (``build_allocator``/``build_synth``), not a copy of it:
    with ``migrate_on_start`` off they refuse an unmigrated database, and start once
    ``voiceslot migrate`` has run."""
    from voiceslot.config import AllocatorConfig, SynthConfig
    from voiceslot.storage.local import LocalStorage

    settings = make_settings(
        allocator=AllocatorConfig(database_url=postgres_url, maintenance_interval_s=None),
        synth=SynthConfig(database_url=postgres_url, batch_workers=0),
        migrate_on_start=False,
        schema_wait_s=0.3,
    )
    storage = LocalStorage(tmp_path / "storage")
    with pytest.raises(SchemaNotReady):
        await allocator_app.build_allocator(settings, storage=storage, providers={})
    with pytest.raises(SchemaNotReady):
        await synth_app.build_synth(settings, storage=storage, providers={})
    assert await _versions_or_none(postgres_url) is None, "nothing may have migrated"

    env = {
        "VOICESLOT_DATA_DIR": str(tmp_path / "data"),
        "VOICESLOT_ALLOCATOR__DATABASE_URL": postgres_url,
        "VOICESLOT_SYNTH__DATABASE_URL": postgres_url,
        "VOICESLOT_CONFIG": None,
    }
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["migrate"], env=env)
    assert result.exit_code == 0, result.output
    allocator = await allocator_app.build_allocator(
        settings, storage=storage, providers={}, background=False
    )
    await allocator.stop()


async def _versions_or_none(url: str) -> dict[str, list[str]] | None:
    try:
        return await _versions(url)
    except Exception:  # the version tables do not exist
        return None
