"""``voiceslot serve --workers N``: several processes on one port, one replica.

Run as a user runs it, on PostgreSQL: every worker process listens on the one port, calls
on fresh connections all succeed and reach more than one worker, the metrics endpoint adds
up every worker's counts, SIGTERM stops them all with exit code 0, and a worker that dies
on its own takes the replica down (non-zero) for the orchestrator to restart. SQLite is
refused with a message that says why.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml

from tests.conftest import ADMIN_KEY, TEST_KEYS, auth
from voiceslot.v1 import allocator_pb2 as apb
from voiceslot.v1 import allocator_pb2_grpc

pytestmark = [pytest.mark.slow]

WORKERS = 2
START_DEADLINE_S = 180  # migrations and two interpreters on a loaded 2-core machine


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, database_url: str | None, metrics_port: int) -> Path:
    config = {
        "data_dir": str(tmp_path / "data"),
        "listen": "127.0.0.1:0",
        "log_level": "WARNING",
        "shutdown_grace_s": 5,
        "metrics_port": metrics_port,
        "providers": [{"name": "ca", "kind": "cartesia", "api_key": "k", "capacity": 2}],
        "default_provider": "ca",
        "auth": {
            "api_keys": [
                k.model_dump(mode="json") | {"key": k.key.get_secret_value()} for k in TEST_KEYS
            ]
        },
        "allocator": {"database_url": database_url, "maintenance_interval_s": None},
    }
    path = tmp_path / "voiceslot.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start(config: Path, tmp_path: Path) -> subprocess.Popen[str]:
    (tmp_path / "metrics").mkdir()
    return subprocess.Popen(
        [sys.executable, "-m", "voiceslot", "--config", str(config), "serve"]
        + ["--only", "allocator", "--workers", str(WORKERS)],
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "serve.log", "w"),  # noqa: SIM115 - lives as long as the process
        text=True,
        env={
            **os.environ,
            "PYTHONFAULTHANDLER": "1",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        },
    )


def wait_serving(process: subprocess.Popen[str], log: Path) -> int:
    assert process.stdout is not None
    for line in process.stdout:
        if match := re.search(r"serving allocator on port (\d+) \((\d+) worker", line):
            assert int(match.group(2)) == WORKERS
            return int(match.group(1))
    raise AssertionError(f"exited before serving ({process.wait()}): {log.read_text()[-3000:]}")


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(c) for c in text.split()]


def listening_inodes(port: int) -> set[str]:
    """Socket inodes in LISTEN state on ``port`` (gRPC binds 127.0.0.1 as an IPv4-mapped
    IPv6 address, so both tables are read)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def metric_total(metrics_port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.decode().splitlines()
        if line.startswith(name + "{")
    )


@pytest.mark.postgres
async def test_workers_share_the_port_add_up_metrics_and_stop_together(
    tmp_path: Path, postgres_url: str
):
    metrics_port = free_port()
    process = start(write_config(tmp_path, postgres_url, metrics_port), tmp_path)
    try:
        port = wait_serving(process, tmp_path / "serve.log")
        workers = children(process.pid)
        assert len(workers) == WORKERS
        listeners = listening_inodes(port)
        assert all(socket_inodes(w) & listeners for w in workers), "every worker listens"

        calls = 24
        for _ in range(calls):  # a fresh connection each: the kernel spreads them
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
                await stub.ListVoices(apb.ListVoicesRequest(), metadata=auth(ADMIN_KEY))
        # A worker's counter file appears with the first call it counts.
        served_by = [w for w in workers if (tmp_path / "metrics" / f"counter_{w}.db").exists()]
        assert len(served_by) == WORKERS, "fresh connections reach every worker"
        assert metric_total(metrics_port, "voiceslot_rpc_total") >= calls

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert all(_gone(w) for w in workers)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _gone(pid: int) -> bool:
    """Exited (a zombie until its parent reaps it counts: it runs nothing)."""
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split()[2] == "Z"


@pytest.mark.postgres
def test_a_worker_that_dies_takes_the_replica_down(tmp_path: Path, postgres_url: str):
    process = start(write_config(tmp_path, postgres_url, free_port()), tmp_path)
    try:
        wait_serving(process, tmp_path / "serve.log")
        victim, survivor = children(process.pid)
        os.kill(victim, signal.SIGKILL)
        assert process.wait(timeout=60) == 1
        assert _gone(survivor)
        assert "exited with -9; stopping all" in (tmp_path / "serve.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sqlite_is_refused_with_the_reason(tmp_path: Path):
    process = start(write_config(tmp_path, None, free_port()), tmp_path)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 2
    log = (tmp_path / "serve.log").read_text()
    assert "needs PostgreSQL" in log and "allocator database is SQLite" in log
