"""Assemble the synthesizer from settings."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from synth_svc.allocator_client import AllocatorClient
from synth_svc.batch import BatchJobs
from synth_svc.repository import JobRepository
from synth_svc.service import Synthesizer
from synth_svc.servicer import SynthesizerServicer
from synth_svc.worker import (
    BatchWorker,
)
from voiceslot.clock import Clock, SystemClock
from voiceslot.config import Settings
from voiceslot.credentials import read_local_key
from voiceslot.db import create_engine, prepare_service_schema, session_factory, upgrade_to_head
from voiceslot.providers.base import Provider
from voiceslot.rpc.interceptors import current_credential
from voiceslot.rpc.server import ServiceRegistration
from voiceslot.storage.base import Storage
from voiceslot.v1 import synthesizer_pb2, synthesizer_pb2_grpc

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_synth"


async def migrate(url: str) -> None:
    """Bring the synthesizer's tables to head; replicas starting at once take turns."""
    await upgrade_to_head(MIGRATIONS, url, version_table=VERSION_TABLE)


def service_credential(settings: Settings, internal_key: str | None) -> str:
    """What the synthesizer presents for work of its own (batch jobs): the configured key,
    else the in-process internal key, else the embedded default's local admin key."""
    if settings.synth.allocator_api_key is not None:
        return settings.synth.allocator_api_key.get_secret_value()
    return internal_key or read_local_key(settings.data_dir) or ""


@dataclass
class SynthApp:
    synthesizer: Synthesizer
    batch: BatchJobs
    worker: BatchWorker
    engine: AsyncEngine
    registration: ServiceRegistration
    settings: Settings
    _client: AllocatorClient | None = field(default=None)

    def connect(self, allocator_target: str, *, internal_key: str | None = None) -> None:
        """Point at the allocator; called once the address is known (after the server
        binds, when both run in one process)."""
        holder = self.worker.holder
        # Calls on behalf of a caller carry the caller's own credential, so the
        # allocator applies the caller's rights (another user's voice stays NOT_FOUND).
        self._client = AllocatorClient(
            self.settings.synth.allocator_target or allocator_target,
            credential=lambda: (
                current_credential() or service_credential(self.settings, internal_key)
            ),
            holder=holder,
        )
        self.worker.start()

    def client(self) -> AllocatorClient:
        if self._client is None:
            raise RuntimeError("synthesizer not connected to an allocator")
        return self._client

    async def stop(self, *, grace_s: float = 10.0) -> None:
        await self.worker.stop(grace_s=grace_s)
        if self._client is not None:
            await self._client.close()
        await self.engine.dispose()


def replica_name() -> str:
    """This replica's name on leases and claimed batch items: host and process."""
    return f"synth-{socket.gethostname()}-{os.getpid()}"


async def build_synth(
    settings: Settings,
    *,
    storage: Storage,
    providers: dict[str, Provider],
    clock: Clock | None = None,
) -> SynthApp:
    url = settings.synth_database_url
    # Migrate here, or (the chart's migration Job ran them) wait for the schema we need.
    await prepare_service_schema(MIGRATIONS, url, version_table=VERSION_TABLE, settings=settings)
    engine = create_engine(url)
    clock = clock or SystemClock()
    app: SynthApp
    # Late-bound: the allocator client exists only once connect() has run.
    synthesizer = Synthesizer(
        providers=providers, config=settings.synth, allocator=lambda: app.client()
    )
    jobs = JobRepository(session_factory(engine))
    batch = BatchJobs(
        jobs=jobs,
        storage=storage,
        config=settings.synth,
        clock=clock,
        allocator=lambda: app.client(),
        presign_ttl_s=settings.storage.presign_ttl_s,
    )
    worker = BatchWorker(
        jobs=jobs,
        batch=batch,
        synthesizer=synthesizer,
        storage=storage,
        config=settings.synth,
        storage_config=settings.storage,
        clock=clock,
        holder=replica_name(),
        item_lease=timedelta(seconds=settings.synth.item_lease_s),
        retention_every_s=settings.synth.retention_every_s,
    )
    batch.on_created = worker.wake
    registration = ServiceRegistration(
        full_name=synthesizer_pb2.DESCRIPTOR.services_by_name["SynthesizerService"].full_name,
        add_to_server=synthesizer_pb2_grpc.add_SynthesizerServiceServicer_to_server,
        servicer=SynthesizerServicer(synthesizer, batch),
    )
    app = SynthApp(synthesizer, batch, worker, engine, registration, settings)
    return app
