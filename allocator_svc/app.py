"""Assemble the allocator from settings: migrations, engine, repository, use cases and
the gRPC registration. The CLI's ``serve`` and the tests call this."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from allocator_svc.repository import AllocatorRepository
from allocator_svc.service import Allocator
from allocator_svc.servicer import AllocatorServicer
from voiceslot.clock import Clock
from voiceslot.config import Settings
from voiceslot.db import (
    create_engine,
    is_sqlite,
    prepare_service_schema,
    session_factory,
    upgrade_to_head,
)
from voiceslot.providers.base import Provider
from voiceslot.rpc.server import ServiceRegistration
from voiceslot.storage.base import Storage
from voiceslot.v1 import allocator_pb2, allocator_pb2_grpc

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_allocator"


async def migrate(url: str) -> None:
    await upgrade_to_head(MIGRATIONS, url, version_table=VERSION_TABLE)


def hot_path_engine(url: str, *, pool_size: int = 8) -> AsyncEngine | None:
    """On PostgreSQL, an autocommit engine without pre-ping for EnsureActiveVoice's hot
    path: its lease is one statement, so this makes it one round trip instead of six
    (pre-ping's BEGIN/ping/ROLLBACK, then BEGIN, the statement, COMMIT). Completing an
    allocation and reading the breaker use it too. None on SQLite.

    Without pre-ping, a connection the server dropped (a restart) fails on use: the lease
    batcher retries once on a fresh one; a failed completion is not retried (its fence
    would make a retry after an unknown outcome look fenced off) and is left to the
    stuck sweeper, which adopts the remote voice by its label.

    No overflow: a call holds a connection for one round trip, so a few connections
    serve thousands of calls a second, and callers beyond them wait in the pool's queue.
    Overflow connections would be opened and closed per burst (a TLS attempt and
    authentication each), which cost more than the waiting.
    """
    if is_sqlite(url):
        return None
    return create_async_engine(
        url,
        isolation_level="AUTOCOMMIT",
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=False,
        # Its statements find rows by key. Each is prepared once per kept connection
        # and PostgreSQL keeps the plan until the table's statistics change: planned
        # while leases was a page (a fresh deployment, before autovacuum's ANALYZE), the
        # grant counted a voice's leases by scanning every row, for the plan's life.
        connect_args={"server_settings": {"enable_seqscan": "off"}},
    )


@dataclass
class AllocatorApp:
    allocator: Allocator
    engine: AsyncEngine
    registration: ServiceRegistration
    hot_engine: AsyncEngine | None = None

    async def stop(self, *, grace_s: float = 10.0) -> None:
        await self.allocator.stop(grace_s=grace_s)
        await self.allocator.repo.aclose()
        await self.engine.dispose()
        if self.hot_engine is not None:
            await self.hot_engine.dispose()


async def build_allocator(
    settings: Settings,
    *,
    storage: Storage,
    providers: dict[str, Provider],
    clock: Clock | None = None,
    background: bool = True,
) -> AllocatorApp:
    url = settings.allocator_database_url
    # Migrate here, or (the chart's migration Job ran them) wait for the schema we need.
    await prepare_service_schema(MIGRATIONS, url, version_table=VERSION_TABLE, settings=settings)
    engine = create_engine(url)
    hot = hot_path_engine(url)
    allocator = Allocator(
        repo=AllocatorRepository(session_factory(engine), hot_engine=hot),
        providers=providers,
        storage=storage,
        config=settings.allocator,
        default_provider=settings.default_provider,
        clock=clock,
        capacities={p.name: p.capacity for p in settings.providers},
    )
    await allocator.start(background=background)
    registration = ServiceRegistration(
        full_name=allocator_pb2.DESCRIPTOR.services_by_name["AllocatorService"].full_name,
        add_to_server=allocator_pb2_grpc.add_AllocatorServiceServicer_to_server,
        servicer=AllocatorServicer(allocator),
    )
    return AllocatorApp(allocator, engine, registration, hot)
