"""Database engines and migrations, shared by both services.

SQLite (the embedded default) runs in WAL mode with ``BEGIN IMMEDIATE`` transactions:
the write lock is taken when a transaction starts, not at its first write, so two
transactions that read-then-write can never both proceed on stale reads (SQLite's answer
to ``SELECT … FOR UPDATE``). PostgreSQL gets row locks with ``FOR UPDATE SKIP LOCKED``
in the repositories. Each service owns its tables and its own Alembic history (own
version table), so both may share one PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, DateTime, MetaData, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.types import TypeDecorator

# Waiting for SQLite's write lock held by another process (a migration, a second server on
# the same file by mistake): past this, fail rather than hang.
SQLITE_BUSY_TIMEOUT_S = 10
# Waiting in this process's queue for the one connection: sized for a loaded 2-core machine
# with every caller of a busy replica in line.
SQLITE_QUEUE_TIMEOUT_S = 60


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An async engine configured for the backend named by ``url``."""
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # One connection, so writers queue in the pool's FIFO (asyncio) instead of in
        # SQLite's busy handler: every transaction takes the write lock (BEGIN IMMEDIATE)
        # anyway, and the busy handler's backoff polling is unfair — under load a waiter
        # lost to newcomers for the whole busy timeout and failed with "database is locked".
        engine = create_async_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S},
            pool_size=1,
            max_overflow=0,
            pool_timeout=SQLITE_QUEUE_TIMEOUT_S,
        )
        _configure_sqlite(engine)
        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


_CONNECTION_LOST = (
    ConnectionError,
    OSError,
    asyncpg.PostgresConnectionError,  # SQLSTATE 08: the connection is gone
    asyncpg.OperatorInterventionError,  # 57: terminated by an administrator, shutting down
    asyncpg.InterfaceError,  # "connection is closed" on the client's side
    asyncpg.InternalClientError,  # a connection left mid-protocol by a cut
)


_CONFLICTS = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)

# What asyncpg raises itself, for statements run on its own connection (the allocator's
# lease hot path, ``allocator_svc.repository._driver``), not wrapped by SQLAlchemy.
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


def _database_error_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, when ``exc`` is a database error (SQLAlchemy's wrapper
    or the driver's own); empty for any other error, which says nothing about the
    database however it was caused."""
    if not isinstance(exc, (sa_exc.DBAPIError, *_DRIVER_ERRORS)):
        return []
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 16:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return chain


def is_connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is a database error that says the connection itself is gone (a
    restart, ``pg_terminate_backend``, a cut): the same statement may run again on a
    fresh connection."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return any(isinstance(c, _CONNECTION_LOST) for c in _database_error_chain(exc))


def is_transaction_conflict(exc: BaseException) -> bool:
    """Whether PostgreSQL aborted our transaction to resolve a conflict with another one
    (a deadlock, a serialization failure): nothing was written, and the same request may
    simply be retried. ABORTED, not INTERNAL."""
    return any(isinstance(c, _CONFLICTS) for c in _database_error_chain(exc))


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not serve us just now, not that our
    statement was wrong: a connection dropped or terminated (a failover, a restart,
    ``pg_terminate_backend``), the pool's wait ran out, SQLite's lock wait ran out. The
    caller may retry the same request: UNAVAILABLE, not INTERNAL (which means a bug)."""
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.OperationalError):
        return True
    return is_connection_lost(exc)


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see "begin").
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Transactions are short (no external calls inside one); a writer waiting longer
        # than this is stuck behind an abandoned transaction and should fail, not hang.
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(script_location: Path, url: str, *, version_table: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.set_main_option("version_table", version_table)
    return cfg


def advisory_lock_key(name: str) -> int:
    """A stable signed 64-bit PostgreSQL advisory lock key for ``name`` (Python's
    ``hash`` is salted per process; every replica must agree on the key)."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def migration_lock_key(version_table: str) -> int:
    """The advisory lock key under which one service's migrations run."""
    return advisory_lock_key(f"voiceslot:migrate:{version_table}")


async def upgrade_to_head(script_location: Path, url: str, *, version_table: str) -> None:
    """Run a service's migrations. Alembic is synchronous; it runs in a thread and its
    env.py drives the async engine with ``run_sync``.

    On PostgreSQL the run holds a session-level advisory lock per service: replicas
    starting together would otherwise race on ``CREATE TABLE`` (the loser fails on
    ``pg_type_typname_nsp_index`` and exits); with the lock the second finds the schema at
    head and does nothing. SQLite serves one process and needs no lock."""
    cfg = alembic_config(script_location, url, version_table=version_table)
    if is_sqlite(url):
        await asyncio.to_thread(command.upgrade, cfg, "head")
        return
    key = migration_lock_key(version_table)
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            await conn.commit()
            try:
                await asyncio.to_thread(command.upgrade, cfg, "head")
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                await conn.commit()
    finally:
        await engine.dispose()


class SchemaNotReady(RuntimeError):
    """The database's schema did not reach the version this code needs in time."""


async def schema_status(script_location: Path, url: str, *, version_table: str) -> str | None:
    """None when the database's schema serves this code, else why not (for the log).

    It serves when it is at this code's head, and also when it is at a revision this
    code does not know: a newer release migrated it (a ``helm rollback`` runs no
    migration; migrations are expand/contract, so the older code keeps working)."""
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    script = ScriptDirectory.from_config(
        alembic_config(script_location, url, version_table=version_table)
    )
    heads = set(script.get_heads())
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            current = set(
                await conn.run_sync(
                    lambda sync: MigrationContext.configure(
                        sync, opts={"version_table": version_table}
                    ).get_current_heads()
                )
            )
    finally:
        await engine.dispose()
    if current == heads:
        return None
    for revision in current:
        try:
            script.get_revision(revision)
        except CommandError:
            return None  # newer than this code: see above
    return f"{version_table} is at {sorted(current) or 'nothing'}, this code needs {sorted(heads)}"


async def wait_for_schema(
    script_location: Path,
    url: str,
    *,
    version_table: str,
    timeout_s: float,
    poll_s: float = 2.0,
) -> None:
    """Wait, without migrating, until the schema serves this code (see ``schema_status``):
    for deployments where a separate step migrates (``voiceslot migrate``, the chart's
    Job) and a service must not race it or migrate under replicas still serving.
    A database that cannot be reached yet counts as not ready. Raises ``SchemaNotReady``
    after ``timeout_s``, naming what it last saw."""
    log = logging.getLogger("voiceslot.db")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    logged = False
    while True:
        try:
            reason = await schema_status(script_location, url, version_table=version_table)
        except (OSError, sa_exc.SQLAlchemyError, asyncpg.PostgresError) as exc:
            reason = f"database not reachable: {type(exc).__name__}: {exc}"
        if reason is None:
            return
        if not logged:  # one line, not one per poll
            log.warning(
                "waiting up to %.0fs for migrations (voiceslot migrate): %s", timeout_s, reason
            )
            logged = True
        if loop.time() >= deadline:
            raise SchemaNotReady(
                f"schema not ready after {timeout_s:.0f}s: {reason}; run `voiceslot migrate` "
                "(the Helm chart's migration Job) or set migrate_on_start"
            )
        await asyncio.sleep(min(poll_s, max(0.0, deadline - loop.time())))


class SchemaSettings(Protocol):
    """What a service's start needs to know about its schema (``voiceslot.config.Settings``
    has both)."""

    migrate_on_start: bool
    schema_wait_s: float


async def prepare_service_schema(
    script_location: Path, url: str, *, version_table: str, settings: SchemaSettings
) -> None:
    """``prepare_schema`` as ``settings`` say: every service's start calls this."""
    await prepare_schema(
        script_location,
        url,
        version_table=version_table,
        migrate=settings.migrate_on_start,
        wait_s=settings.schema_wait_s,
    )


async def prepare_schema(
    script_location: Path, url: str, *, version_table: str, migrate: bool, wait_s: float
) -> None:
    """At a service's start: migrate (``migrate_on_start``) or wait for another step to."""
    if migrate:
        await upgrade_to_head(script_location, url, version_table=version_table)
    else:
        await wait_for_schema(script_location, url, version_table=version_table, timeout_s=wait_s)


# Deterministic constraint names, so migrations can name what they alter on both backends.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend.

    SQLite has no timezone type and hands back naive values; storing naive UTC and
    re-attaching UTC on the way out keeps comparisons in Python correct on both backends.
    """

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def run_alembic_env(target_metadata: MetaData) -> None:
    """The body of each service's ``migrations/env.py``: online migrations through the
    async engine, batch mode on SQLite (it cannot ALTER most things in place)."""
    from alembic import context

    cfg = context.config
    url = cfg.get_main_option("sqlalchemy.url")
    assert url
    version_table = cfg.get_main_option("version_table") or "alembic_version"

    def do_run(connection: Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table=version_table,
            render_as_batch=is_sqlite(url),
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    async def run_async() -> None:
        engine = create_engine(url, pool_size=1)
        try:
            async with engine.connect() as connection:
                await connection.run_sync(do_run)
                await connection.commit()
        finally:
            await engine.dispose()

    asyncio.run(run_async())
