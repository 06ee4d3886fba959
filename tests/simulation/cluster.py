"""The real processes a schedule runs against: allocator replicas (``python -m voiceslot
serve --only allocator``) on PostgreSQL or SQLite, and the provider emulator on loopback.

Replicas are OS processes reached over gRPC on 127.0.0.1; the emulator runs in this
process (uvicorn in a thread, real HTTP on loopback) so that its ground-truth clock is the
clients' clock. Faults in the processes: ``kill`` (SIGKILL, no goodbye) and ``restart``;
``drop_pg_connections`` (``pg_terminate_backend`` on every connection to the database).
Every wait has a deadline and says what it waited for when it runs out.

``VOICESLOT_SIM_CODE=<dir>`` runs the replicas from another source tree (a checkout of
the commit under test, e.g. ``git archive <rev> | tar -x -C <dir>``): its packages go
first on the replicas' ``PYTHONPATH``; the clients and checks stay on this tree.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import TEST_KEYS
from tests.simulation.schedule import ProviderSpec, Schedule
from voiceslot.testing.emulator import Account, EmulatorState, ProviderEmulator

LABEL_PREFIX = "vs-"
CODE_DIR_ENV = "VOICESLOT_SIM_CODE"
READY_TIMEOUT_S = 60.0
"""A replica's start on a loaded 2-core machine: imports, migrations, provider rows."""
STOP_TIMEOUT_S = 20.0

ALLOCATOR_SETTINGS: dict[str, Any] = {
    "label_prefix": LABEL_PREFIX,
    "dispatch_interval_s": 0.05,
    # Short, so reclaim, retries and stuck resets happen within a 10 s schedule.
    "idle_reclaim_after_s": 0.5,
    "max_attempts": 4,
    "backoff_base_s": 0.1,
    "backoff_max_s": 1.0,
    "allocation_timeout_s": 6.0,
    "per_user_max_queued": 20,
    "default_lease_ttl_s": 2.0,
    # Off: the schedule runs maintenance as admin steps, and quiescence runs it last, so
    # what the checks see is what the run left, not what a background sweep repaired.
    "maintenance_interval_s": None,
}


def emulator_state(schedule: Schedule) -> EmulatorState:
    """Accounts without a slot cap of their own (an emulator that refused the extra clone
    would hide an overshoot); the ledger watches the capacity voiceslot is given."""
    accounts = [
        Account.elevenlabs(p.api_key, voice_limit=None, max_concurrency=None)
        if p.kind == "elevenlabs"
        else Account.cartesia(p.api_key, voice_limit=None, max_concurrency=None)
        for p in schedule.providers
    ]
    state = EmulatorState(accounts=accounts, seed=schedule.seed, label_prefix=LABEL_PREFIX)
    for p in schedule.providers:
        state.watch_capacity(p.kind, p.api_key, p.capacity)
    return state


def provider_settings(
    providers: Sequence[ProviderSpec], emulator: ProviderEmulator, timeout_s: float
) -> list[dict[str, Any]]:
    return [
        {
            "name": p.name,
            "kind": p.kind,
            "api_key": p.api_key,
            "base_url": emulator.base_url(p.kind),
            "capacity": p.capacity,
            "timeout_s": timeout_s,
        }
        for p in providers
    ]


def write_config(
    path: Path, *, data_dir: Path, providers: list[dict[str, Any]], database_url: str | None
) -> Path:
    allocator = dict(ALLOCATOR_SETTINGS)
    if database_url:
        allocator["database_url"] = database_url
    config = {
        "data_dir": str(data_dir),
        "listen": "127.0.0.1:0",
        "log_level": "WARNING",
        "log_format": "json",
        "shutdown_grace_s": 2,
        "default_provider": providers[0]["name"],
        "providers": providers,
        "auth": {
            "api_keys": [
                k.model_dump(mode="json") | {"key": k.key.get_secret_value()} for k in TEST_KEYS
            ],
            # The clients are ours; per-caller rate limits are tested elsewhere.
            "rate_limit_per_second": 1_000_000,
            "rate_limit_burst": 1_000_000,
        },
        "allocator": allocator,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def replica_env() -> dict[str, str]:
    """The replicas' environment: ours, plus the source tree under test when one is named."""
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    code = os.environ.get(CODE_DIR_ENV)
    if code:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [code, env.get("PYTHONPATH")]))
    return env


@dataclass
class Replica:
    """One allocator process; ``start`` again after ``kill`` gives a fresh process."""

    index: int
    config: Path
    log: Path
    process: subprocess.Popen[str] | None = None
    port: int = 0
    kills: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None and self.port > 0

    def spawn(self) -> None:
        with open(self.log, "a") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')}\n")
            log.flush()
            self.port = 0
            self.process = subprocess.Popen(
                [sys.executable, "-m", "voiceslot", "--config", str(self.config)]
                + ["serve", "--only", "allocator"],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=replica_env(),
                # ``python -m`` puts the working directory first on sys.path: run from
                # the tree under test, or this checkout's code would be imported instead.
                cwd=os.environ.get(CODE_DIR_ENV) or None,
                # No preexec_fn (e.g. PR_SET_PDEATHSIG): it forces a plain fork(), and
                # gRPC's fork handlers in the child then abort it (epoll_wait: EBADF).
            )

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Read the port from the "serving ... on port N" line, within ``timeout_s``."""
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(self.process.stdout, selectors.EVENT_READ)
            while (left := deadline - time.monotonic()) > 0:
                if not sel.select(timeout=left):
                    continue
                line = self.process.stdout.readline()
                if not line:
                    code = self.process.wait(timeout=STOP_TIMEOUT_S)
                    raise RuntimeError(
                        f"replica {self.index} exited ({code}) before serving; log "
                        f"{self.log}: {self.log.read_text()[-2000:]}"
                    )
                if match := re.search(r"serving .* on port (\d+)", line):
                    self.port = int(match.group(1))
                    return
        raise RuntimeError(
            f"replica {self.index} printed no 'serving ... on port' line within "
            f"{timeout_s:.0f}s; log {self.log}"
        )

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup; in-flight claims stay behind in the database."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_S)
            self.kills += 1
        self._close()
        self.port = 0

    def stop(self) -> int | None:
        """SIGTERM and wait for the graceful exit; SIGKILL if it does not come."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
        code = self.process.wait(timeout=STOP_TIMEOUT_S)
        self._close()
        return code

    def _close(self) -> None:
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()


@dataclass
class Cluster:
    schedule: Schedule
    workdir: Path
    emulator: ProviderEmulator
    database_url: str | None
    pg_admin: str | None
    replicas: list[Replica] = field(default_factory=list)

    @property
    def database_name(self) -> str | None:
        return self.database_url.rsplit("/", 1)[1] if self.database_url else None

    def live_targets(self) -> list[str]:
        return [r.target for r in self.replicas if r.alive]

    def drop_pg_connections(self) -> int:
        """Terminate every server connection to the schedule's database (the replicas'
        pools must notice and reconnect); how many were dropped."""
        if self.pg_admin is None or self.database_name is None:
            return 0
        import psycopg

        with psycopg.connect(f"{self.pg_admin}/postgres", autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.database_name,),
            ).fetchall()
        return len(rows)


@contextmanager
def scratch_database(pg_admin: str | None) -> Iterator[str | None]:
    """A fresh PostgreSQL database (dropped afterwards), or None for SQLite."""
    if pg_admin is None:
        yield None
        return
    import psycopg

    name = f"vs_sim_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{pg_admin}/postgres", autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://{pg_admin.split('://', 1)[1]}/{name}"
    finally:
        with psycopg.connect(f"{pg_admin}/postgres", autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def running_cluster(schedule: Schedule, workdir: Path, pg_admin: str | None) -> Iterator[Cluster]:
    """The emulator and ``schedule.replicas`` allocator processes, stopped afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    admin = pg_admin if schedule.database == "postgres" else None
    with (
        scratch_database(admin) as database_url,
        ProviderEmulator(state=emulator_state(schedule)) as emulator,
    ):
        config = write_config(
            workdir / "voiceslot.yaml",
            data_dir=workdir / "data",
            providers=provider_settings(schedule.providers, emulator, schedule.adapter_timeout_s),
            database_url=database_url,
        )
        cluster = Cluster(schedule, workdir, emulator, database_url, admin)
        cluster.replicas = [
            Replica(i, config, workdir / f"replica{i}.log") for i in range(schedule.replicas)
        ]
        try:
            first, *others = cluster.replicas
            first.spawn()
            first.wait_ready()  # runs the migrations before the others race on them
            for r in others:
                r.spawn()
            for r in others:
                r.wait_ready()
            yield cluster
        finally:
            for r in cluster.replicas:
                r.stop()
