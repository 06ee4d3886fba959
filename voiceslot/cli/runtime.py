"""Run the services in this process: what ``voiceslot serve`` does.

Both services share one gRPC server, one storage and one set of provider adapters (so
the local engine's model pool exists once); the synthesizer reaches the allocator over
gRPC exactly as it would across the cluster, through a Unix socket of this process's own:
with ``serve --workers`` several processes share the TCP port, and the synthesizer's
per-process key is known only to the allocator beside it.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from allocator_svc.app import AllocatorApp, build_allocator
from synth_svc.app import SynthApp, build_synth
from synth_svc.openai_api import HttpApiServer, build_app
from voiceslot import telemetry
from voiceslot.auth import generate_key
from voiceslot.config import Settings
from voiceslot.credentials import key_table
from voiceslot.logs import get_logger
from voiceslot.providers.registry import build_providers
from voiceslot.rpc.server import RunningServer, start_server
from voiceslot.storage.factory import build_storage

log = get_logger("voiceslot.runtime")

SERVICES = ("allocator", "synth")


class Runtime:
    """Started services; ``stop`` shuts them down in reverse order."""

    def __init__(self, settings: Settings, *, reuse_port: bool = False) -> None:
        self.settings = settings
        self.reuse_port = reuse_port
        self._private_dir: Path | None = None
        self.allocator: AllocatorApp | None = None
        self.synth: SynthApp | None = None
        self.server: RunningServer | None = None
        self.http: HttpApiServer | None = None
        self.providers: dict = {}

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def http_port(self) -> int:
        """The OpenAI-compatible API's port (``synth.http``), once started."""
        assert self.http is not None, "the HTTP API is off (synth.http.enabled)"
        return self.http.port

    async def start(self, *, only: tuple[str, ...] = SERVICES) -> Runtime:
        settings = self.settings
        in_process = (
            "allocator" in only and "synth" in only and settings.synth.allocator_target is None
        )
        internal_key = generate_key() if in_process else None
        keys = key_table(settings, internal_key=internal_key)
        storage = build_storage(settings)
        self.providers = build_providers(settings, storage=storage)
        if telemetry.TRACING.on:  # spans around every storage and provider call
            storage = telemetry.Traced(storage, "storage")
            self.providers = {
                name: telemetry.Traced(provider, "provider", provider=name)
                for name, provider in self.providers.items()
            }
        registrations = []
        if "allocator" in only:
            self.allocator = await build_allocator(
                settings, storage=storage, providers=self.providers
            )
            registrations.append(self.allocator.registration)
        if "synth" in only:
            self.synth = await build_synth(settings, storage=storage, providers=self.providers)
            registrations.append(self.synth.registration)
        private_target = None
        if in_process:
            self._private_dir = Path(tempfile.mkdtemp(prefix="voiceslot-"))
            private_target = f"unix:{self._private_dir / 'grpc.sock'}"
        self.server = await start_server(
            listen=settings.listen,
            registrations=registrations,
            keys=keys,
            rate_per_second=settings.auth.rate_limit_per_second,
            burst=settings.auth.rate_limit_burst,
            reuse_port=self.reuse_port,
            private_listen=private_target,
        )
        if self.synth is not None:
            self.synth.connect(
                private_target or f"127.0.0.1:{self.server.port}", internal_key=internal_key
            )
            if settings.synth.http.enabled:
                # Beside gRPC, on the same synthesizer, keys and rate-limit buckets.
                app = build_app(
                    self.synth.synthesizer,
                    self.server.interceptor.admission,
                    max_body_bytes=settings.synth.http.max_body_bytes,
                )
                self.http = await HttpApiServer(
                    app, settings.synth.http, reuse_port=self.reuse_port
                ).start()
        if settings.metrics_port:
            telemetry.serve_metrics(settings.metrics_port)
        if telemetry.TRACING.on:
            self._trace_databases()
        return self

    def _trace_databases(self) -> None:
        if self.allocator is not None:
            telemetry.trace_engine(self.allocator.engine, "allocator")
            if self.allocator.hot_engine is not None:
                telemetry.trace_engine(self.allocator.hot_engine, "allocator")
        if self.synth is not None:
            telemetry.trace_engine(self.synth.engine, "synth")

    async def stop(self) -> None:
        """Drain the server, then stop the services' background work and close providers.
        Every step is bounded: a dependency that hangs (a database lock held by a
        transaction abandoned mid-way, a provider that never answers) is logged and
        skipped rather than keeping the process alive past its grace period."""
        grace = self.settings.shutdown_grace_s
        background_grace = min(grace, 10.0)
        # Both front doors drain at once, each within the grace period.
        draining = []
        if self.http is not None:
            draining.append(_bounded("http", self.http.stop(grace), grace + 5))
        if self.server is not None:
            draining.append(_bounded("drain", self.server.stop(grace), grace + 5))
        await asyncio.gather(*draining)
        if self.synth is not None:
            await _bounded("synth", self.synth.stop(grace_s=background_grace), background_grace + 5)
        if self.allocator is not None:
            await _bounded(
                "allocator", self.allocator.stop(grace_s=background_grace), background_grace + 5
            )
        for name, provider in self.providers.items():
            await _bounded(f"provider {name}", provider.aclose(), 5)
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)


async def _bounded(step: str, work: Awaitable[None], timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            await work
    except TimeoutError:
        log.error("shutdown step timed out", step=step, timeout_s=timeout_s)
    except Exception as exc:  # shutting down anyway: record it and go on
        log.error("shutdown step failed", step=step, error=repr(exc))


async def serve(
    settings: Settings,
    *,
    only: tuple[str, ...] = SERVICES,
    stop: asyncio.Event,
    on_ready: Callable[[int], None] | None = None,
    reuse_port: bool = False,
) -> None:
    telemetry.configure_tracing()  # when the OTEL_* variables ask for it
    try:
        runtime = await Runtime(settings, reuse_port=reuse_port).start(only=only)
        # Everything built so far (modules, protobuf descriptors, SQLAlchemy's metadata)
        # lives as long as the process: moved out of the collector's sight, a full
        # collection no longer walks it in the middle of someone's call (a tail-latency
        # pause that grows with every imported module).
        gc.freeze()
        log.info("started", event_loop=type(asyncio.get_running_loop()).__module__)
        try:
            if on_ready is not None:
                on_ready(runtime.port)
            await stop.wait()
            log.info("shutting down", grace_s=settings.shutdown_grace_s)
        finally:
            await runtime.stop()
    finally:
        telemetry.shutdown_tracing()
