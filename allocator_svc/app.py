"""Assemble the allocator from settings: migrations, engine, repository, use cases and
the gRPC registration. The CLI's ``serve`` and the tests call this."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from allocator_svc.repository import AllocatorRepository
from allocator_svc.service import Allocator
from allocator_svc.servicer import AllocatorServicer
from voiceslot.clock import Clock
from voiceslot.config import Settings
from voiceslot.db import create_engine, session_factory, upgrade_to_head
from voiceslot.providers.base import Provider
from voiceslot.rpc.server import ServiceRegistration
from voiceslot.storage.base import Storage
from voiceslot.v1 import allocator_pb2, allocator_pb2_grpc

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_allocator"


async def migrate(url: str) -> None:
    await upgrade_to_head(MIGRATIONS, url, version_table=VERSION_TABLE)


@dataclass
class AllocatorApp:
    allocator: Allocator
    engine: AsyncEngine
    registration: ServiceRegistration

    async def stop(self, *, grace_s: float = 10.0) -> None:
        await self.allocator.stop(grace_s=grace_s)
        await self.engine.dispose()


async def build_allocator(
    settings: Settings,
    *,
    storage: Storage,
    providers: dict[str, Provider],
    clock: Clock | None = None,
    background: bool = True,
) -> AllocatorApp:
    url = settings.allocator_database_url
    await migrate(url)
    engine = create_engine(url)
    allocator = Allocator(
        repo=AllocatorRepository(session_factory(engine)),
        providers=providers,
        storage=storage,
        config=settings.allocator,
        default_provider=settings.default_provider,
        clock=clock,
    )
    await allocator.start(background=background)
    registration = ServiceRegistration(
        full_name=allocator_pb2.DESCRIPTOR.services_by_name["AllocatorService"].full_name,
        add_to_server=allocator_pb2_grpc.add_AllocatorServiceServicer_to_server,
        servicer=AllocatorServicer(allocator),
    )
    return AllocatorApp(allocator, engine, registration)
