"""Fixtures shared by the whole suite.

- PostgreSQL: a fresh database per test that asks for one, on the server at
  VOICESLOT_TEST_PG (default postgresql://postgres@127.0.0.1:5432). If the server cannot
  be reached the test FAILS: CI must run the PostgreSQL tests, never skip them.
- The local engine: a tiny random-weight XTTS built once per session and loaded through
  the same code path as a real checkpoint.
- ``runtime``: both services in this process on an ephemeral port, reached over real
  gRPC sockets.
- Before anything runs, the environment is compared with the lock (uv.lock, `dev` extra):
  a stale or hand-modified venv stops the run, naming the packages that differ.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from voiceslot.config import (
    AllocatorConfig,
    ApiKeyConfig,
    AuthConfig,
    ProviderConfig,
    Settings,
    SynthConfig,
)
from voiceslot.testing.samples import make_sample_wav

ROOT = Path(__file__).resolve().parent.parent
PG_SERVER = os.environ.get("VOICESLOT_TEST_PG", "postgresql://postgres@127.0.0.1:5432")

ADMIN_KEY = "test-admin-key"
ALICE_KEY = "test-alice-key"
BOB_KEY = "test-bob-key"
TEST_KEYS = (
    ApiKeyConfig(key=ADMIN_KEY, user="admin", role="admin"),
    ApiKeyConfig(key=ALICE_KEY, user="alice", role="user"),
    ApiKeyConfig(key=BOB_KEY, user="bob", role="user"),
)


def lock_mismatch() -> str | None:
    """What `uv sync --check` would change to make this environment equal the lock's `dev`
    install (uv itself compares: one reading of the lock, not a second parser here);
    None when it already does."""
    bundled = Path(sys.prefix, ".uv", "bin", "uv")  # where scripts/_env.sh installs uv
    uv = str(bundled) if bundled.exists() else shutil.which("uv")
    if uv is None:
        return "uv is not installed: run ./scripts/test, which builds the venv from uv.lock"
    env = {
        **os.environ,
        "UV_PROJECT_ENVIRONMENT": sys.prefix,
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_OFFLINE": "1",
    }
    proc = subprocess.run(
        [uv, "sync", "--frozen", "--check", "--extra", "dev", "--python", sys.executable],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode == 0:
        return None
    changes = [
        line.strip()
        for line in (proc.stdout + proc.stderr).splitlines()
        if line.lstrip().startswith(("+ ", "- ", "~ "))
    ]
    return "\n".join(changes) or proc.stderr.strip()


def pytest_sessionstart(session: pytest.Session) -> None:
    mismatch = lock_mismatch()
    if mismatch is not None:
        pytest.exit(
            "the environment differs from uv.lock (- installed here, + locked); "
            f"./scripts/test re-syncs it:\n{mismatch}",
            returncode=3,
        )


def auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture(scope="session")
def pg_admin() -> str:
    try:
        with psycopg.connect(f"{PG_SERVER}/postgres", connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required and unreachable at {PG_SERVER}: {exc}", pytrace=False)
    return PG_SERVER


@pytest.fixture
def postgres_url(pg_admin: str) -> Iterator[str]:
    """A fresh, empty database; dropped afterwards."""
    name = f"vs_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{pg_admin}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+asyncpg://{pg_admin.split('://', 1)[1]}/{name}"
    with psycopg.connect(f"{pg_admin}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def tiny_xtts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from voiceslot.testing.tiny_models import build_tiny_xtts

    return build_tiny_xtts(tmp_path_factory.mktemp("tiny-xtts"))


@pytest.fixture(scope="session")
def sample_wav() -> bytes:
    return make_sample_wav(seconds=3.0)


@pytest.fixture
def make_settings(tmp_path: Path, tiny_xtts_dir: Path) -> Callable[..., Settings]:
    """Settings for an isolated deployment under tmp_path, on SQLite unless a database
    URL is given."""

    def factory(
        *, database_url: str | None = None, capacity: int = 4, **overrides: Any
    ) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "listen": "127.0.0.1:0",
            "log_format": "console",
            "shutdown_grace_s": 10.0,
            "providers": (
                ProviderConfig(
                    name="local", kind="local", model_dir=tiny_xtts_dir, capacity=capacity
                ),
            ),
            "auth": AuthConfig(api_keys=TEST_KEYS),
            "allocator": AllocatorConfig(
                database_url=database_url, maintenance_interval_s=None, dispatch_interval_s=0.1
            ),
            "synth": SynthConfig(database_url=database_url),
        }
        values.update(overrides)
        return Settings(**values)

    return factory


@pytest.fixture
async def runtime(make_settings: Callable[..., Settings]) -> AsyncIterator[Any]:
    from voiceslot.cli.runtime import Runtime

    rt = await Runtime(make_settings()).start()
    try:
        yield rt
    finally:
        await rt.stop()


@pytest.fixture
async def channel(runtime: Any) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as ch:
        yield ch
