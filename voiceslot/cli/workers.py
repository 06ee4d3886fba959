"""``voiceslot serve --workers N``: N server processes sharing one port.

gRPC Python serves each process from one event loop, so one process uses about one core.
The way gRPC Python scales on one machine is several processes listening on the same port
with ``SO_REUSEPORT`` (the kernel spreads connections over them; gRPC's own
``examples/python/multiprocessing`` does this). Replicas of voiceslot already coordinate
only through the database, so N workers are simply N replicas that share an address —
which is why more than one needs PostgreSQL: SQLite serves one process.

This parent process only supervises. It reserves the port (so that port 0 means one free
port for all), starts the workers as ``voiceslot serve --worker`` processes (spawned, not
forked: gRPC's core does not survive a fork), serves their merged Prometheus metrics,
forwards SIGTERM/SIGINT, and exits non-zero as soon as a worker dies on its own, so that
the orchestrator restarts the whole replica instead of leaving it half-alive.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from voiceslot.config import Settings
from voiceslot.db import is_sqlite

# Starting a worker loads providers (the local engine's model) and runs migrations: sized
# for a loaded 2-core machine.
WORKER_START_TIMEOUT_S = 300.0
POLL_S = 0.1


class WorkersRefused(Exception):
    """The configuration cannot run several workers; the message says why."""


def refusal(settings: Settings, only: Sequence[str]) -> str | None:
    """Why ``settings`` cannot run in several processes, or None when it can."""
    urls = {
        "allocator": settings.allocator_database_url,
        "synth": settings.synth_database_url,
    }
    on_sqlite = [name for name in only if is_sqlite(urls[name])]
    if on_sqlite:
        return (
            f"--workers > 1 needs PostgreSQL: the {' and '.join(on_sqlite)} database is SQLite, "
            "which serves one process (set allocator.database_url / synth.database_url)"
        )
    return None


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket: it holds the port (a free one for port
    0) until every worker has bound it too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


@dataclass
class Worker:
    index: int
    process: subprocess.Popen[bytes]
    port_file: Path

    @property
    def ready(self) -> bool:
        return self.port_file.exists()


def worker_command(index: int, listen: str, port_file: Path, only: Sequence[str]) -> list[str]:
    args = [sys.executable, "-m", "voiceslot", "serve", "--worker", str(index)]
    args += ["--listen", listen, "--port-file", str(port_file)]
    for name in only:
        args += ["--only", name]
    return args


def run_workers(
    settings: Settings,
    *,
    count: int,
    only: Sequence[str],
    on_ready: Callable[[int], None],
    log: Callable[[str], None],
) -> int:
    """Supervise ``count`` workers until a stop signal (exit code 0 when all of them shut
    down cleanly) or until one dies on its own (1)."""
    reason = refusal(settings, only)
    if reason is not None:
        raise WorkersRefused(reason)
    if not settings.auth.api_keys:
        # Create the local admin key once, before the workers race to.
        from voiceslot.credentials import ensure_local_admin_key

        ensure_local_admin_key(settings.data_dir)

    host, port = split_listen(settings.listen)
    reservation = reserve_port(host, port)
    port = reservation.getsockname()[1]
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    scratch = Path(tempfile.mkdtemp(prefix="voiceslot-workers-"))
    env = dict(os.environ)
    # prometheus-client's multiprocess mode: each worker writes its values to files here
    # (the standard variable, when it is set: a directory that is empty at start).
    metrics_dir = Path(env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(scratch / "metrics")))
    metrics_dir.mkdir(parents=True, exist_ok=True)

    stopping = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    workers = [
        Worker(
            index=i,
            process=subprocess.Popen(
                worker_command(i, listen, scratch / f"worker{i}.port", only),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # the parent prints the one "serving" line
            ),
            port_file=scratch / f"worker{i}.port",
        )
        for i in range(count)
    ]
    try:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while not all(w.ready for w in workers):
            if stopping or _first_dead(workers) is not None or time.monotonic() > deadline:
                log("workers did not all start; stopping")
                _stop_all(workers, settings.shutdown_grace_s)
                return 1
            time.sleep(POLL_S)
        reservation.close()  # every worker holds the port now
        if settings.metrics_port:
            _serve_merged_metrics(settings.metrics_port, metrics_dir)
        on_ready(port)
        while not stopping:
            dead = _first_dead(workers)
            if dead is not None:
                log(f"worker {dead.index} exited with {dead.process.returncode}; stopping all")
                _stop_all(workers, settings.shutdown_grace_s)
                return 1
            time.sleep(POLL_S)
        codes = _stop_all(workers, settings.shutdown_grace_s)
        return 0 if all(code == 0 for code in codes) else 1
    finally:
        reservation.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _first_dead(workers: list[Worker]) -> Worker | None:
    return next((w for w in workers if w.process.poll() is not None), None)


def _stop_all(workers: list[Worker], grace_s: float) -> list[int]:
    """SIGTERM every worker (each drains its calls within ``grace_s``), then SIGKILL any
    still running well past that."""
    for w in workers:
        if w.process.poll() is None:
            w.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s + 15
    codes = []
    for w in workers:
        try:
            codes.append(w.process.wait(timeout=max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            w.process.kill()
            codes.append(w.process.wait())
    return codes


def _serve_merged_metrics(port: int, directory: Path) -> None:
    """One metrics endpoint for all workers: prometheus-client's multiprocess mode (each
    worker writes its values under ``directory``; this collector adds them up)."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    start_http_server(port, registry=registry)
