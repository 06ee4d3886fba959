"""Dispatch throughput: queued allocations turned READY per second by 1 and 4 allocator
replicas against an instant provider, beside a bare ``FOR UPDATE SKIP LOCKED`` dequeue
loop run by as many processes on the same database in the same run.

    python bench/dispatch.py                    # PostgreSQL (VOICESLOT_BENCH_PG)
    python bench/dispatch.py --allocations 1000

Each replica is its own process running the real ``Allocator`` (dispatcher, lifecycle,
repository) with an in-process provider whose clone returns at once, so what is measured
is the allocator's own machinery: claiming under the provider lock with fair ordering,
reading the sample, the clone call, the fenced completion. The token bucket is opened
wide for the run (its job is to slow clones down). The bare loop does the least a
durable queue must: claim a batch with ``SKIP LOCKED`` and mark it taken, then complete
each item in its own transaction, through the same engine setup (SQLAlchemy + asyncpg).
Replicas and workers wait for a start signal, so process start-up is not timed.

Each replica count runs at two sizes: ``small`` (a fresh database holding only the
benchmark's voices) and ``large`` (the same, beside other users' history: 100,000
registered voices of 5,000 users, 50,000 of them queued with their requests due, the
rest holding slots; see ``_common.seed_backlog``). Those users hold slots, so the fair
order serves the benchmark's users first, but every claim round's order, backlog and
capacity look at their rows.

Writes bench/results/dispatch.json: allocations_per_s and bare_dequeue_per_s for each
replica count and size, their ratio (goal >= 0.5), and the large run's throughput as a
share of the small one's (goal >= 0.8).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, scratch_database, seed_backlog, stop, write_result  # noqa: E402

sys.path.insert(0, str(ROOT))

PROVIDER = "instant"
BATCH = 32


class InstantProvider:
    """Clones and deletes at once; remembers labels so adoption look-ups work."""

    kind = "cartesia"
    name = PROVIDER

    def __init__(self) -> None:
        self.voices: dict[str, Any] = {}

    async def clone(self, request: Any) -> Any:
        from voiceslot.providers.base import RemoteVoice

        voice = RemoteVoice(f"r-{request.label}", request.label, request.label)
        self.voices[voice.provider_voice_id] = voice
        return voice

    async def find_by_label(self, label: str) -> Any:
        return self.voices.get(f"r-{label}")

    async def delete(self, provider_voice_id: str) -> None:
        self.voices.pop(provider_voice_id, None)

    async def list_voices(self, *, label_prefix: str = ""):  # noqa: ANN201
        for voice in list(self.voices.values()):
            yield voice

    async def capacity(self) -> Any:
        from voiceslot.providers.base import Capacity

        return Capacity(limit=None, used=len(self.voices))

    async def aclose(self) -> None:
        return None


# -- the processes ------------------------------------------------------------------------


async def replica(url: str, storage_root: str, capacity: int) -> None:
    """An allocator replica: dispatcher running, nothing else (no gRPC, no maintenance)."""
    from allocator_svc.app import hot_path_engine
    from allocator_svc.repository import AllocatorRepository
    from allocator_svc.service import Allocator
    from voiceslot.config import AllocatorConfig
    from voiceslot.db import create_engine, session_factory
    from voiceslot.logs import configure_logging
    from voiceslot.storage.local import LocalStorage
    from voiceslot.token_bucket import TokenBucket

    configure_logging(level="INFO", fmt="json")  # to stderr: stdout is the control pipe
    engine = create_engine(url)
    hot = hot_path_engine(url)  # wired as build_allocator wires it
    config = AllocatorConfig(
        database_url=url,
        maintenance_interval_s=None,
        dispatch_interval_s=0.05,
        dispatch_batch=BATCH,
    )
    allocator = Allocator(
        repo=AllocatorRepository(session_factory(engine), hot_engine=hot),
        providers={PROVIDER: InstantProvider()},  # type: ignore[dict-item]
        storage=LocalStorage(Path(storage_root)),
        config=config,
        default_provider=PROVIDER,
        capacities={PROVIDER: capacity},
        bucket=TokenBucket(rate_per_s=1e9, burst=1e9),
    )
    await allocator.start(background=False)
    print("replica ready on port 0", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # the start signal
    allocator.dispatcher.start()
    await asyncio.to_thread(sys.stdin.readline)  # the stop signal (or EOF)
    await allocator.stop(grace_s=5)
    await engine.dispose()
    if hot is not None:
        await hot.dispose()


async def bare_worker(url: str) -> None:
    """The baseline: claim up to BATCH with SKIP LOCKED, then complete each one."""
    from sqlalchemy import text

    from voiceslot.db import create_engine

    engine = create_engine(url)
    claim = text(
        "UPDATE bench_jobs SET state = 'leased', lease_token = :token, updated_at = now() "
        "WHERE id IN (SELECT id FROM bench_jobs WHERE state = 'queued' ORDER BY id "
        "LIMIT :n FOR UPDATE SKIP LOCKED) RETURNING id"
    )
    complete = text(
        "UPDATE bench_jobs SET state = 'done', lease_token = NULL, updated_at = now() "
        "WHERE id = :id AND lease_token = :token"
    )
    print("worker ready on port 0", flush=True)
    await asyncio.to_thread(sys.stdin.readline)

    async def finish(job_id: int, token: str) -> None:
        async with engine.begin() as conn:
            await conn.execute(complete, {"id": job_id, "token": token})

    n = 0
    while True:
        n += 1
        token = f"t{n}"
        async with engine.begin() as conn:
            ids = [r[0] for r in await conn.execute(claim, {"token": token, "n": BATCH})]
        if not ids:
            break
        await asyncio.gather(*(finish(i, token) for i in ids))
    await engine.dispose()


# -- the driver ---------------------------------------------------------------------------


def start_procs(args: list[list[str]], logs: Path) -> list[subprocess.Popen[str]]:
    """Start the processes and wait for each one's "ready" line. With
    VOICESLOT_BENCH_PROFILE=<dir>, each runs under cProfile and leaves its profile there."""
    procs = []
    profile_dir = os.environ.get("VOICESLOT_BENCH_PROFILE")
    for i, cmd in enumerate(args):
        if profile_dir:
            out = Path(profile_dir) / f"{Path(cmd[1]).stem}-{cmd[2].strip('-')}-{i}.prof"
            wrapper = str(Path(__file__).with_name("_profiled.py"))
            cmd = [sys.executable, wrapper, str(out), *cmd[1:]]
        with open(logs / f"proc{i}.log", "w") as err:
            procs.append(
                subprocess.Popen(
                    cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
                )
            )
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()
        if "ready" not in line:
            raise RuntimeError(f"process failed to start: {(logs / 'proc0.log').read_text()}")
    return procs


def signal_all(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()


BENCH_USERS = 200


def bench_user(i: int) -> str:
    """The owner of the benchmark's ``i``-th voice."""
    return f"user{i % BENCH_USERS}"


async def prepare_allocations(url: str, storage_root: Path, n: int) -> None:
    """A fresh schema with ``n`` voices queued for allocation."""
    from allocator_svc.app import migrate
    from allocator_svc.repository import AllocatorRepository, EnsureParams, NewVoice
    from voiceslot.clock import SystemClock
    from voiceslot.db import create_engine, session_factory
    from voiceslot.ids import new_id
    from voiceslot.storage.local import LocalStorage

    await migrate(url)
    await LocalStorage(storage_root).put("samples/bench.wav", b"RIFF-bench-sample")
    engine = create_engine(url)
    repo = AllocatorRepository(session_factory(engine))
    now = SystemClock().now()
    await repo.upsert_providers([(PROVIDER, "cartesia", n)], now)
    for i in range(n):
        voice, _ = await repo.create_voice(
            NewVoice(
                id=new_id("v"),
                owner=bench_user(i),
                display_name="b",
                provider=PROVIDER,
                language="en",
                sample_key="samples/bench.wav",
                sample_sha256="0" * 64,
                sample_bytes=17,
                idempotency_key=None,
            ),
            now,
        )
        await repo.ensure_active(
            EnsureParams(voice.id, None, timedelta(seconds=60), "bench", 0, n, 1.0), now
        )
    await engine.dispose()


async def count(url: str, sql: str) -> int:
    from sqlalchemy import text

    from voiceslot.db import create_engine

    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(text(sql))).scalar_one())
    finally:
        await engine.dispose()


async def wait_until(url: str, sql: str, target: int, *, timeout_s: float) -> float:
    from sqlalchemy import text

    from voiceslot.db import create_engine

    engine = create_engine(url, pool_size=1)
    began = time.perf_counter()
    try:
        async with engine.connect() as conn:
            while True:
                done = int((await conn.execute(text(sql))).scalar_one())
                await conn.commit()
                if done >= target:
                    return time.perf_counter() - began
                if time.perf_counter() - began > timeout_s:
                    raise RuntimeError(f"only {done}/{target} after {timeout_s} s")
                await asyncio.sleep(0.01)
    finally:
        await engine.dispose()


def measure_allocator(url: str, work: Path, replicas: int, n: int, *, large: bool) -> float:
    storage = work / "storage"
    asyncio.run(prepare_allocations(url, storage, n))
    capacity = n + (asyncio.run(seed_backlog(url, provider=PROVIDER)) if large else 0)
    me = str(Path(__file__).resolve())
    procs = start_procs(
        [[sys.executable, me, "--replica", url, str(storage), str(capacity)]] * replicas, work
    )
    # By owner, which is indexed: polled every 10 ms, a scan of the large size's 100,000
    # voices took a core of the database's away from the replicas being measured.
    owners = ", ".join(f"'{bench_user(i)}'" for i in range(BENCH_USERS))
    ours = f"SELECT count(*) FROM voices WHERE owner IN ({owners}) AND state = 'ready'"
    try:
        signal_all(procs)
        elapsed = asyncio.run(wait_until(url, ours, n, timeout_s=600))
    finally:
        signal_all(procs)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop(p)
    return n / elapsed


async def prepare_bare(url: str, n: int) -> None:
    from sqlalchemy import text

    from voiceslot.db import create_engine

    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS bench_jobs"))
        await conn.execute(
            text(
                "CREATE TABLE bench_jobs (id BIGSERIAL PRIMARY KEY, state VARCHAR(10) NOT NULL, "
                "lease_token VARCHAR(40), updated_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
        )
        await conn.execute(text("CREATE INDEX ix_bench_jobs_state ON bench_jobs (state, id)"))
        await conn.execute(
            text("INSERT INTO bench_jobs (state) SELECT 'queued' FROM generate_series(1, :n)"),
            {"n": n},
        )
    await engine.dispose()


def measure_bare(url: str, work: Path, workers: int, n: int) -> float:
    asyncio.run(prepare_bare(url, n))
    me = str(Path(__file__).resolve())
    procs = start_procs([[sys.executable, me, "--bare-worker", url]] * workers, work)
    try:
        signal_all(procs)
        elapsed = asyncio.run(
            wait_until(
                url, "SELECT count(*) FROM bench_jobs WHERE state = 'done'", n, timeout_s=600
            )
        )
    finally:
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop(p)
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--allocations", type=int, default=2000)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--sizes", nargs="+", choices=["small", "large"], default=["small", "large"]
    )
    parser.add_argument("--replica", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--bare-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replica:
        url, storage_root, capacity = args.replica
        asyncio.run(replica(url, storage_root, int(capacity)))
        return
    if args.bare_worker:
        asyncio.run(bare_worker(args.bare_worker))
        return

    runs = []
    for replicas in args.replicas:
        small = None
        for size in args.sizes:
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                with scratch_database("postgres", work) as url:
                    bare = measure_bare(url, work, replicas, args.allocations)
                with scratch_database("postgres", work) as url:
                    allocations = measure_allocator(
                        url, work, replicas, args.allocations, large=size == "large"
                    )
            run = {
                "replicas": replicas,
                "size": size,
                "allocations_per_s": round(allocations, 1),
                "bare_dequeue_per_s": round(bare, 1),
                "ratio": round(allocations / bare, 3),
            }
            if size == "small":
                small = allocations
            elif small:
                run["of_small"] = round(allocations / small, 3)
            runs.append(run)
            print(run, flush=True)
    result = {
        "benchmark": "dispatch",
        "database": "postgres",
        "allocations": args.allocations,
        "batch": BATCH,
        "runs": runs,
    }
    print(write_result("dispatch", result).read_text())


if __name__ == "__main__":
    main()
