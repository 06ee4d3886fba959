"""Shared plumbing of the benchmarks: a throwaway database, allocator replicas as
processes, a closed-loop gRPC load generator. Not tests: nothing here asserts speed."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
PG_SERVER = os.environ.get("VOICESLOT_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@contextmanager
def scratch_database(kind: str, workdir: Path) -> Iterator[str]:
    """A fresh database URL (``postgres`` or ``sqlite``), dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / 'bench.sqlite3'}"
        return
    import psycopg

    name = f"vs_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://{PG_SERVER.split('://', 1)[1]}/{name}"
    finally:
        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def spawn(args: list[str], *, log: Path, env: dict[str, str] | None = None) -> tuple[Any, int]:
    """Start a server process that prints "... on port N" on stdout; (process, port).
    With VOICESLOT_BENCH_PROFILE=<dir> set, Python servers run under cProfile and leave
    their profile there (for finding where the time goes, not for the numbers)."""
    profile_dir = os.environ.get("VOICESLOT_BENCH_PROFILE")
    if profile_dir and args[0] == sys.executable:
        out = Path(profile_dir) / f"{log.stem}.prof"
        args = [sys.executable, str(Path(__file__).with_name("_profiled.py")), str(out), *args[1:]]
    with open(log, "w") as err:
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, **(env or {})}
        )
    assert proc.stdout is not None
    for line in proc.stdout:
        if match := re.search(r"on port (\d+)", line):
            return proc, int(match.group(1))
    raise RuntimeError(f"{args} exited ({proc.wait()}): {log.read_text()[-2000:]}")


def stop(proc: Any) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class LoadResult:
    rps: float
    p50_ms: float
    p99_ms: float
    calls: int
    server_cpu_us: float | None = None
    """CPU the server process spent per call while measuring (all its threads), when its
    pid was given: steadier than calls per second on a machine shared with other work."""
    client_cpu_us: float = 0.0
    """CPU this (the calling) process spent per call while measuring."""


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quiet_collector() -> None:
    """Collect, then freeze what this (client) process holds, so that its own full
    garbage collections during a measurement walk only what the measurement allocates:
    walking every imported module's objects took up to 23 ms, which landed in the
    server's measured tail. The servers do the same after start-up."""
    gc.collect()
    gc.freeze()


async def closed_loop(
    call: Callable[[int], Awaitable[Any]],
    *,
    concurrency: int,
    warmup_s: float,
    measure_s: float,
    server_pid: int | None = None,
) -> LoadResult:
    """``concurrency`` callers, each issuing ``call`` back to back; counts the calls that
    complete inside the measurement window (after a warm-up), and with ``server_pid`` the
    CPU that process spent per call meanwhile."""
    latencies: list[float] = []
    state = {"measuring": False, "stop": False}

    async def caller(i: int) -> None:
        while not state["stop"]:
            started = time.perf_counter()
            await call(i)
            if state["measuring"]:
                latencies.append(time.perf_counter() - started)

    quiet_collector()
    tasks = [asyncio.create_task(caller(i)) for i in range(concurrency)]
    await asyncio.sleep(warmup_s)
    state["measuring"] = True
    began = time.perf_counter()
    cpu_began = process_cpu_s(server_pid) if server_pid else 0.0
    client_began = time.process_time()
    await asyncio.sleep(measure_s)
    state["measuring"] = False
    elapsed = time.perf_counter() - began
    cpu = process_cpu_s(server_pid) - cpu_began if server_pid else None
    client_cpu = time.process_time() - client_began
    state["stop"] = True
    await asyncio.gather(*tasks)
    latencies.sort()
    n = len(latencies)
    return LoadResult(
        rps=n / elapsed,
        p50_ms=1000 * latencies[n // 2] if n else 0.0,
        p99_ms=1000 * latencies[min(n - 1, int(n * 0.99))] if n else 0.0,
        calls=n,
        server_cpu_us=round(cpu / n * 1e6, 1) if cpu is not None and n else None,
        client_cpu_us=round(client_cpu / n * 1e6, 1) if n else 0.0,
    )


def machine_busy_s() -> float:
    """CPU seconds this machine's cores have spent busy so far, all cores together
    (``/proc/stat``: everything but idle and iowait)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuReading:
    """What the server, this process and the whole machine had spent at one moment."""

    server_s: float
    client_s: float
    machine_s: float
    at: float

    @classmethod
    def now(cls, server_pid: int | None) -> CpuReading:
        return cls(
            server_s=process_cpu_s(server_pid) if server_pid else 0.0,
            client_s=time.process_time(),
            machine_s=machine_busy_s(),
            at=time.perf_counter(),
        )


@dataclass
class OpenLoopResult:
    rate: float
    """Arrivals per second asked for."""
    achieved: float
    """Calls completed per second."""
    p50_ms: float
    p99_ms: float
    calls: int
    late_starts: int
    """Arrivals the generator itself started more than 1 ms late (its own overload)."""
    server_cpu_us: float | None = None
    """CPU the server process spent per call while measuring, when its pid was given."""
    client_cpu_us: float = 0.0
    """CPU this (the calling) process spent per call while measuring."""
    machine_busy_cores: float = 0.0
    """How many of the machine's cores were busy on average while measuring (server,
    client, database and anything else): at a fixed rate, the tail grows with this."""


async def open_loop(
    call: Callable[[int], Awaitable[Any]],
    *,
    rate: float,
    warmup_s: float,
    measure_s: float,
    server_pid: int | None = None,
) -> OpenLoopResult:
    """Calls arrive at a fixed ``rate`` whatever the server does (as a product's traffic
    does), each timed from its scheduled arrival, so queueing behind a slow server shows
    in the latency instead of slowing the arrivals (no coordinated omission). CPU is read
    from the first measured arrival until the last measured call has returned."""
    interval = 1.0 / rate
    latencies: list[float] = []
    late = 0
    tasks: set[asyncio.Task[None]] = set()
    began: CpuReading | None = None

    async def one(i: int, due: float, measured: bool) -> None:
        await call(i)
        if measured:
            latencies.append(time.perf_counter() - due)

    quiet_collector()
    start = time.perf_counter()
    measure_from = start + warmup_s
    end = measure_from + measure_s
    i = 0
    while (due := start + i * interval) < end:
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > 0.001 and due >= measure_from:
            late += 1
        if began is None and due >= measure_from:
            began = CpuReading.now(server_pid)
        task = asyncio.create_task(one(i, due, due >= measure_from))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    if tasks:
        await asyncio.gather(*tasks)
    ended = CpuReading.now(server_pid)
    latencies.sort()
    n = len(latencies)
    per_call = 1e6 / n if n else 0.0
    return OpenLoopResult(
        rate=rate,
        achieved=n / measure_s,
        p50_ms=1000 * latencies[n // 2] if n else 0.0,
        p99_ms=1000 * latencies[min(n - 1, int(n * 0.99))] if n else 0.0,
        calls=n,
        late_starts=late,
        server_cpu_us=round((ended.server_s - began.server_s) * per_call, 1)
        if server_pid and began
        else None,
        client_cpu_us=round((ended.client_s - began.client_s) * per_call, 1) if began else 0.0,
        machine_busy_cores=round((ended.machine_s - began.machine_s) / (ended.at - began.at), 2)
        if began
        else 0.0,
    )


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return ""


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = {
        **result,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "commit": git_commit(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


# -- the large size: a deployment with history --------------------------------------------

LARGE_VOICES = 100_000
LARGE_QUEUED = 50_000
LARGE_USERS = 5_000


async def seed_backlog(
    url: str,
    *,
    provider: str,
    voices: int = LARGE_VOICES,
    queued: int = LARGE_QUEUED,
    users: int = LARGE_USERS,
    sample_key: str = "samples/bench.wav",
    due: bool = True,
) -> int:
    """Fill an allocator database (PostgreSQL) with other users' history at ``provider``:
    ``voices`` registered voices of ``users`` users, of which ``queued`` wait for a slot
    (each with its due allocation request) and the rest hold one (READY, used earlier,
    pinned by their owners so that reclaim weighs them and leaves them). Returns the
    slots they hold, to add to the provider's capacity.

    These users each already hold slots, so the fair order places their requests *behind*
    those of the benchmark's own users (who hold none): the benchmark's calls run with the
    queue, the fair order, positions and reclaim candidates all looking at these rows,
    without the backlog's own allocations being what is measured. With ``due=False`` the
    requests wait out a retry delay (a day) instead, so a running dispatcher leaves them
    alone. One ``INSERT ... SELECT`` per table (``generate_series``): seconds, not
    minutes."""
    from sqlalchemy import text

    from voiceslot.db import create_engine

    held = voices - queued
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO voices (id, owner, display_name, provider, language, state,"
                " generation, provider_voice_id, pinned, sample_key, sample_sha256,"
                " sample_bytes, last_error, created_at, updated_at, state_changed_at,"
                " last_used_at)"
                " SELECT 'vbulk' || i, 'bulk' || (i % :users), 'bulk', :provider, 'en',"
                " CASE WHEN i < :held THEN 'ready' ELSE 'queued' END, 1,"
                " CASE WHEN i < :held THEN 'r-bulk' || i END, i < :held, :sample, :sha, 17, '',"
                " now() - interval '1 day', now() - interval '1 hour',"
                " now() - interval '1 hour', now() - interval '1 hour' * (1 + i % 24)"
                " FROM generate_series(0, :n - 1) AS i"
            ),
            {
                "users": users,
                "provider": provider,
                "held": held,
                "sample": sample_key,
                "sha": "0" * 64,
                "n": voices,
            },
        )
        await conn.execute(
            text(
                "INSERT INTO allocation_requests (voice_id, owner, provider, priority, state,"
                " attempts, run_at, idempotency_key, last_error, created_at, updated_at)"
                " SELECT id, owner, provider, 0, 'queued', 0, now() + :delay * interval '1 second',"
                " id || :suffix, '', now() - interval '1 hour', now() - interval '1 hour'"
                " FROM voices WHERE state = 'queued' AND id LIKE 'vbulk%'"
            ),
            {"suffix": ":q1", "delay": -3600 if due else 86400},
        )
    # As a deployment that has held this history for a while finds its tables: vacuumed
    # and analyzed, not with autovacuum catching up on 150,000 new rows mid-measurement.
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE"))
    await engine.dispose()
    return held
