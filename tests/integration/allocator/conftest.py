"""Fixtures for the allocator's integration tests: the same repository on both
databases, and helpers to put voices into known states without a provider.

Tests that take ``db_url`` (or ``repo``) run twice: on SQLite (WAL, ``BEGIN IMMEDIATE``)
and on PostgreSQL (row locks, ``SKIP LOCKED``), the latter marked ``postgres``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from allocator_svc.app import AllocatorApp, build_allocator, hot_path_engine, migrate
from allocator_svc.domain.reclaim import LeastRecentlyUsed
from allocator_svc.records import Claim, Voice
from allocator_svc.repository import AllocatorRepository, EnsureParams, NewVoice
from allocator_svc.service import Allocator
from tests.conftest import TEST_KEYS
from voiceslot.config import AllocatorConfig, AuthConfig, ProviderConfig, Settings
from voiceslot.credentials import key_table
from voiceslot.db import create_engine, session_factory
from voiceslot.ids import new_id
from voiceslot.rpc.server import RunningServer, start_server
from voiceslot.storage.local import LocalStorage

from .fakes import FakeProvider

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """A moment ``seconds`` after T0: tests pass time explicitly, never read a clock."""
    return T0 + timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'allocator.sqlite3'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
async def make_repo(db_url: str) -> AsyncIterator[Callable[[], AllocatorRepository]]:
    """Repositories on one migrated database, each with its own engines, as separate
    replicas would have them (on PostgreSQL with the batched autocommit hot path, as
    ``build_allocator`` wires it)."""
    await migrate(db_url)
    engines = []
    repos: list[AllocatorRepository] = []

    def factory() -> AllocatorRepository:
        engine = create_engine(db_url)
        hot = hot_path_engine(db_url)
        engines.extend([engine, hot] if hot else [engine])
        repos.append(AllocatorRepository(session_factory(engine), hot_engine=hot))
        return repos[-1]

    yield factory
    try:
        if engines:  # the cached counts stayed exact through the scenario
            checker = factory()
            assert await checker.standing_drift() == []
            assert await checker.lease_count_drift() == []
    finally:
        for made in repos:
            await made.aclose()
        for engine in engines:
            await engine.dispose()


@pytest.fixture
async def repo(make_repo: Callable[[], AllocatorRepository]) -> AllocatorRepository:
    return make_repo()


async def add_voice(
    repo: AllocatorRepository, owner: str, *, provider: str = "p", key: str | None = None
) -> Voice:
    voice, created = await repo.create_voice(
        NewVoice(
            id=new_id("v"),
            owner=owner,
            display_name=f"{owner}'s voice",
            provider=provider,
            language="en",
            sample_key="samples/none.wav",
            sample_sha256="0" * 64,
            sample_bytes=1,
            idempotency_key=key,
        ),
        T0,
    )
    assert created
    return voice


def ensure_params(
    voice_id: str, *, owner: str | None = None, cap: int = 10_000, priority: int = 0
) -> EnsureParams:
    return EnsureParams(
        voice_id=voice_id,
        owner=owner,
        lease_ttl=timedelta(seconds=60),
        holder="test",
        priority=priority,
        per_user_max_queued=cap,
        mean_allocation_s=1.0,
    )


NO_RESIDENCY = LeastRecentlyUsed(min_residency=timedelta(0))


async def claim(
    repo: AllocatorRepository, now: datetime, *, provider: str = "p", limit: int = 100, **kw
):
    kw.setdefault("reclaim_policy", NO_RESIDENCY)
    return await repo.claim(
        provider, now, limit=limit, allocation_timeout=timedelta(seconds=300), **kw
    )


async def make_ready(repo: AllocatorRepository, c: Claim, now: datetime) -> None:
    assert await repo.complete_allocation(
        c, f"remote-{c.voice_id}-{c.generation}", now, adopted=False
    )


@dataclass
class ServedAllocator:
    """An allocator behind a real gRPC server on loopback, over a ``FakeProvider``."""

    app: AllocatorApp
    server: RunningServer
    fake: FakeProvider

    @property
    def allocator(self) -> Allocator:
        return self.app.allocator

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"


@pytest.fixture
async def serve_allocator(
    tmp_path: Path, db_url: str
) -> AsyncIterator[Callable[..., Awaitable[ServedAllocator]]]:
    """Start allocators (dispatcher running, no maintenance loop) on ``db_url``. Taking
    ``db_url`` here also orders teardown: the allocators stop before the database goes."""
    started: list[ServedAllocator] = []

    async def start(
        *, capacity: int = 2, fake: FakeProvider | None = None, **config: Any
    ) -> ServedAllocator:
        fake = fake or FakeProvider(capacity=capacity)
        values: dict[str, Any] = {
            "database_url": db_url,
            "maintenance_interval_s": None,
            "dispatch_interval_s": 0.05,
            **config,
        }
        settings = Settings(
            data_dir=tmp_path / "data",
            listen="127.0.0.1:0",
            log_format="console",
            providers=(
                ProviderConfig(name="fake", kind="cartesia", api_key="k", capacity=capacity),
            ),
            default_provider="fake",
            auth=AuthConfig(api_keys=TEST_KEYS),
            allocator=AllocatorConfig(**values),
        )
        app = await build_allocator(
            settings, storage=LocalStorage(tmp_path / "storage"), providers={"fake": fake}
        )
        server = await start_server(
            listen=settings.listen,
            registrations=[app.registration],
            keys=key_table(settings),
            rate_per_second=settings.auth.rate_limit_per_second,
            burst=settings.auth.rate_limit_burst,
        )
        served = ServedAllocator(app, server, fake)
        started.append(served)
        return served

    yield start
    for served in reversed(started):
        await served.server.stop(0)
        await served.app.stop(grace_s=1)
