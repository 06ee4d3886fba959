"""Fixtures for the operator tests: the real operator (kopf, embedded) against the kmock
Kubernetes emulator, talking gRPC to the real allocator, which clones at the ElevenLabs
emulator on loopback.

- ``k8s``: a kmock ``KubernetesEmulator`` serving the VoiceSlot CRD from
  ``charts/voiceslot/crds/`` (discovery built from the CRD document itself). The
  emulator is subclassed to behave like an API server where kopf depends on it:
  ``resourceVersion`` moves on every write (and a JSON-patch ``test`` on a stale one
  answers 422), ``generation`` moves on spec changes, and ``generateName`` works (kopf
  posts its events with it). It also serves ``GET /api/v1/namespaces`` (list and watch),
  which kmock 0.8 cannot parse and kopf needs in namespaced mode.
- ``watch_mode``: every end-to-end test runs twice, the operator watching cluster-wide
  and watching named namespaces (the chart's default).
- ``Gate``: a TCP proxy between the operator and the allocator that a test can close
  (the allocator unreachable for the operator only) and open again.
- ``start_stack``: starts the allocator (SQLite, a ``ManualClock``, its maintenance loop
  off as in the chart, cloning at the provider emulator) and then the operator in a
  thread of its own, and stops both at teardown. Tests move the allocator's clock to
  make voices idle or allocations stuck; the operator runs on real (short) intervals.

Waiting is always ``eventually(...)`` with a deadline, never a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import grpc
import jsonschema
import kmock
import kopf
import pytest
import yaml

from allocator_svc.app import AllocatorApp, build_allocator
from tests.chart.chartkit import list_map_errors, strict_schema
from tests.conftest import ADMIN_KEY, TEST_KEYS
from voiceslot.clock import ManualClock
from voiceslot.config import AllocatorConfig, AuthConfig, Settings
from voiceslot.credentials import key_table
from voiceslot.providers.base import Provider
from voiceslot.providers.registry import build_providers
from voiceslot.rpc.server import RunningServer, start_server
from voiceslot.storage.factory import build_storage
from voiceslot.testing.emulator import ProviderEmulator
from voiceslot.testing.samples import make_sample_wav
from voiceslot.v1 import allocator_pb2 as pb
from voiceslot.v1 import allocator_pb2_grpc as pb_grpc
from voiceslot.v1 import common_pb2
from voiceslot_operator.cli import serve_operator
from voiceslot_operator.metrics import OperatorMetrics
from voiceslot_operator.settings import OperatorConfig

CRD_PATH = (
    Path(__file__).resolve().parents[2]
    / "charts"
    / "voiceslot"
    / "crds"
    / "voiceslots.voiceslot.io.yaml"
)
NAMESPACE = "voices"
# A second watched namespace, for tenancy tests (its owners set per test).
TENANT_NAMESPACE = "team-a"
PROVIDER = "eleven"
VOICESLOTS = "voiceslot.io/v1alpha1/voiceslots"
DEADLINE_S = 20.0

# Allocator thresholds, in ManualClock seconds: the tests move the clock past them.
IDLE_AFTER_S = 5.0
IDLE_ADVANCE_S = 6.0
ALLOCATION_TIMEOUT_S = 30.0


# -- waiting ---------------------------------------------------------------------------------


async def eventually(
    probe: Callable[[], Any] | Callable[[], Awaitable[Any]],
    *,
    what: str,
    timeout: float = DEADLINE_S,
    interval: float = 0.05,
) -> Any:
    """Poll ``probe`` until it returns something truthy (returned); fail at the deadline
    with the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)


# -- the Kubernetes emulator -----------------------------------------------------------------


@attrs.define(kw_only=True)
class ApiServerEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the API-server bookkeeping kopf relies on (see module doc)."""

    _versions: Iterator[int] = attrs.field(factory=lambda: itertools.count(100), init=False)
    _write_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)

    namespaces: tuple[str, ...] = (NAMESPACE, TENANT_NAMESPACE)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock 0.8 fails to parse this path (it reads "namespaces" as the namespace
        # prefix of a namespaced URL) before any handler could answer it.
        if raw_request.path.rstrip("/") == "/api/v1/namespaces":
            return await self._namespace_list(raw_request)
        return await super().__call__(raw_request)

    async def _namespace_list(
        self, raw_request: aiohttp.web.BaseRequest
    ) -> aiohttp.web.StreamResponse:
        if raw_request.query.get("watch") != "true":
            items = [
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": name, "resourceVersion": "1"},
                    "status": {"phase": "Active"},
                }
                for name in self.namespaces
            ]
            body = {"apiVersion": "v1", "kind": "NamespaceList", "metadata": {}, "items": items}
            body["metadata"]["resourceVersion"] = "1"
            return aiohttp.web.json_response(body)
        # The namespaces never change: a watch stream that stays quiet until its timeout
        # (kopf then watches again), or until the client is gone.
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw_request)
        deadline = time.monotonic() + min(float(raw_request.query.get("timeoutSeconds", 5)), 5)
        while time.monotonic() < deadline:
            transport = raw_request.transport
            if transport is None or transport.is_closing():
                break
            await asyncio.sleep(0.2)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    async def _handle(self, request: kmock.Request) -> Any:
        writes = (kmock.action.CREATE, kmock.action.UPDATE)
        if request.resource is None or request.action not in writes:
            return await super()._handle(request)
        async with self._write_lock:
            self._stamp(request)
            return await super()._handle(request)

    def _current(self, request: kmock.Request) -> dict[str, Any] | None:
        key = (request.resource, request.namespace, request.name)
        obj = self._objects._objects.get(key)  # type: ignore[attr-defined]
        return None if obj is None or obj.deleted else obj.raw

    def _stamp(self, request: kmock.Request) -> None:
        version = str(next(self._versions))
        data = request.data
        if request.action == kmock.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            meta["generation"] = 1
            meta["resourceVersion"] = version
            return
        current = self._current(request)
        if current is None or request.name is None:
            return  # the emulator answers 404 itself
        generation = int(current.get("metadata", {}).get("generation") or 1)
        if isinstance(data, dict):
            meta = data.get("metadata") or {}
            meta["resourceVersion"] = version
            if "spec" in data and request.subresource is None:
                meta["generation"] = generation + 1
            data["metadata"] = meta
        elif isinstance(data, list):
            current_version = current.get("metadata", {}).get("resourceVersion")
            stale = [
                op
                for op in data
                if op.get("op") == "test"
                and op.get("path") == "/metadata/resourceVersion"
                and op.get("value") != current_version
            ]
            if stale:  # a real API server answers 422; kopf retries on its next cycle
                raise kmock.KubernetesError(
                    status=422, reason="Invalid", message="resourceVersion changed"
                )
            data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})


def crd_document() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def crd_schema() -> dict[str, Any]:
    (version,) = [v for v in crd_document()["spec"]["versions"] if v["storage"]]
    return version["schema"]["openAPIV3Schema"]


def register_crd(k8s: kmock.KubernetesEmulator, crd: dict[str, Any]) -> None:
    """Serve the CRD's resource in discovery, as an API server does once it is applied."""
    spec = crd["spec"]
    for version in spec["versions"]:
        if not version.get("served"):
            continue
        k8s.resources[f"{spec['group']}/{version['name']}/{spec['names']['plural']}"] = (
            kmock.ResourceInfo(
                kind=spec["names"]["kind"],
                singular=spec["names"]["singular"],
                namespaced=spec["scope"] == "Namespaced",
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                shortnames=set(spec["names"].get("shortNames", [])),
                categories=set(spec["names"].get("categories", [])),
                subresources=set(version.get("subresources", {})),
            )
        )


@pytest.fixture
async def k8s() -> AsyncIterator[ApiServerEmulator]:
    async with ApiServerEmulator() as emulator, kmock.Server(emulator):
        emulator.resources.load_bundled()  # before the CRD: kopf stalls in discovery otherwise
        register_crd(emulator, crd_document())
        yield emulator


class Cluster:
    """What a person with kubectl does, over HTTP to the emulator, plus assertions on
    what the emulator holds."""

    def __init__(self, k8s: ApiServerEmulator, session: aiohttp.ClientSession) -> None:
        self.k8s = k8s
        self.session = session
        self.url = str(k8s.url).rstrip("/")
        # As the API server validates (unknown fields are errors; OpenAPI 3.0 schemas
        # follow draft 4), the same way the chart tests check the CRD's examples.
        self._schema = crd_schema()
        self._validator = jsonschema.Draft4Validator(
            strict_schema(self._schema), format_checker=jsonschema.FormatChecker()
        )

    def _path(self, name: str | None = None, namespace: str = NAMESPACE) -> str:
        path = f"{self.url}/apis/voiceslot.io/v1alpha1/namespaces/{namespace}/voiceslots"
        return f"{path}/{name}" if name else path

    async def create(
        self,
        name: str,
        voice_id: str,
        *,
        pinned: bool = False,
        namespace: str = NAMESPACE,
        annotations: dict[str, str] | None = None,
        **spec: Any,
    ) -> None:
        metadata: dict[str, Any] = {"name": name, "namespace": namespace}
        if annotations:
            metadata["annotations"] = annotations
        body = {
            "apiVersion": "voiceslot.io/v1alpha1",
            "kind": "VoiceSlot",
            "metadata": metadata,
            "spec": {"voiceId": voice_id, "pinned": pinned, **spec},
        }
        self._validator.validate(body)
        async with self.session.post(self._path(namespace=namespace), json=body) as response:
            assert response.status < 300, await response.text()

    async def patch_spec(self, name: str, namespace: str = NAMESPACE, **spec: Any) -> None:
        await self._merge(name, namespace, {"spec": spec})

    async def annotate(self, name: str, namespace: str = NAMESPACE, **annotations: str) -> None:
        await self._merge(name, namespace, {"metadata": {"annotations": annotations}})

    async def _merge(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        async with self.session.patch(
            self._path(name, namespace),
            json=body,
            headers={"Content-Type": "application/merge-patch+json"},
        ) as response:
            assert response.status < 300, await response.text()

    async def delete(self, name: str, namespace: str = NAMESPACE) -> None:
        async with self.session.delete(self._path(name, namespace)) as response:
            assert response.status < 300, await response.text()

    def get(self, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
        """The stored VoiceSlot, or None when absent or deleted."""
        for (resource, ns, obj_name), obj in self.k8s.objects.items():
            if (
                resource.plural == "voiceslots"
                and ns == namespace
                and obj_name == name
                and not obj.deleted
            ):
                return obj.raw
        return None

    def voiceslots(self, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        return [
            obj.raw
            for (resource, ns, _), obj in self.k8s.objects.items()
            if resource.plural == "voiceslots" and ns == namespace and not obj.deleted
        ]

    def status(self, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
        return dict((self.get(name, namespace) or {}).get("status") or {})

    def condition(self, name: str, type_: str, namespace: str = NAMESPACE) -> dict[str, Any]:
        for c in self.status(name, namespace).get("conditions") or []:
            if c.get("type") == type_:
                return dict(c)
        return {}

    def event_reasons(self, name: str, namespace: str | None = None) -> list[str]:
        """Reasons of the Kubernetes events posted about the VoiceSlot, oldest first."""
        return [
            obj.raw["reason"]
            for (resource, _, _), obj in self.k8s.objects.items()
            if resource.plural == "events"
            and not obj.deleted
            and obj.raw.get("involvedObject", {}).get("name") == name
            and namespace in (None, obj.raw.get("involvedObject", {}).get("namespace"))
        ]

    def writes(self, name: str) -> int:
        """PATCH requests made to the VoiceSlot so far."""
        return sum(
            1
            for request in self.k8s  # kmock iterates over the requests it served
            if request.method == "PATCH"
            and request.resource is not None
            and request.resource.plural == "voiceslots"
            and request.name == name
        )

    async def posted(self, name: str, reason: str, namespace: str | None = None) -> None:
        """Wait for a Kubernetes event about the VoiceSlot (kopf posts them in the
        background, after the handler's status patch)."""
        await eventually(
            lambda: reason in self.event_reasons(name, namespace),
            what=f"a {reason} event on {name}",
        )

    def assert_valid(self) -> None:
        """Everything the operator wrote passes the CRD's own schema."""
        for (resource, _, _), obj in self.k8s.objects.items():
            if resource.plural == "voiceslots" and not obj.deleted:
                self._validator.validate(obj.raw)
                assert not list_map_errors(self._schema, obj.raw)


# -- the allocator ---------------------------------------------------------------------------


class AllocatorDriver:
    """The allocator's API as an app (and an admin) uses it, over gRPC."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.AllocatorServiceStub(self.channel)
        self.md = (("authorization", f"Bearer {ADMIN_KEY}"),)

    async def close(self) -> None:
        await self.channel.close()

    async def register(self, name: str = "voice", *, owner: str = "") -> str:
        """Register a voice (on behalf of ``owner``; empty: the admin's own)."""
        sample = make_sample_wav(seconds=1.5, seed=len(name))

        async def messages() -> AsyncIterator[pb.RegisterVoiceRequest]:
            yield pb.RegisterVoiceRequest(
                metadata=pb.RegisterVoiceMetadata(display_name=name, provider=PROVIDER, owner=owner)
            )
            yield pb.RegisterVoiceRequest(sample_chunk=sample)

        response = await self.stub.RegisterVoice(messages(), metadata=self.md)
        return response.voice.voice_id

    async def ensure(self, voice_id: str, holder: str = "") -> pb.EnsureActiveVoiceResponse:
        return await self.stub.EnsureActiveVoice(
            pb.EnsureActiveVoiceRequest(voice_id=voice_id, lease_holder=holder), metadata=self.md
        )

    async def lease(self, voice_id: str, holder: str = "synth-test/job-1") -> str:
        """A lease on a READY voice (as a synthesis holds one while it speaks)."""
        response = await self.ensure(voice_id, holder)
        assert response.HasField("ready"), response
        return response.ready.lease.lease_id

    async def release(self, lease_id: str) -> None:
        await self.stub.ReleaseLease(pb.ReleaseLeaseRequest(lease_id=lease_id), metadata=self.md)

    async def voice(self, voice_id: str) -> pb.Voice:
        return (
            await self.stub.GetVoice(pb.GetVoiceRequest(voice_id=voice_id), metadata=self.md)
        ).voice

    async def state(self, voice_id: str) -> str:
        return common_pb2.VoiceState.Name((await self.voice(voice_id)).state).removeprefix(
            "VOICE_STATE_"
        )

    async def event_reasons(self, voice_id: str) -> list[str]:
        response = await self.stub.ListVoiceEvents(
            pb.ListVoiceEventsRequest(voice_id=voice_id, page_size=500), metadata=self.md
        )
        return [
            common_pb2.EventReason.Name(e.reason).removeprefix("EVENT_REASON_")
            for e in reversed(response.events)
        ]

    async def delete(self, voice_id: str) -> None:
        await self.stub.DeleteVoice(
            pb.DeleteVoiceRequest(voice_id=voice_id, force=True), metadata=self.md
        )

    async def ready_voice(self, name: str = "voice", *, owner: str = "") -> pb.Voice:
        """Register a voice and wait until it holds a slot (no lease is taken)."""
        voice_id = await self.register(name, owner=owner)
        response = await self.ensure(voice_id)
        if response.HasField("ready"):  # it was ready at once: give the lease back
            await self.release(response.ready.lease.lease_id)

        async def ready() -> pb.Voice | None:
            voice = await self.voice(voice_id)
            return voice if voice.state == common_pb2.VOICE_STATE_READY else None

        return await eventually(ready, what=f"{name} ready")

    async def wait_state(self, voice_id: str, state: str) -> None:
        async def reached() -> bool:
            return await self.state(voice_id) == state

        await eventually(reached, what=f"{voice_id} {state}")


class Gate:
    """A TCP proxy in front of the allocator, for the operator only: ``close()`` cuts
    every connection and refuses new ones (the allocator unreachable), ``open()`` lets
    them through again. The tests' own driver talks to the allocator directly."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.is_open = True
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def close(self) -> None:
        self.is_open = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def open(self) -> None:
        self.is_open = True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.is_open:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))


@dataclass
class Stack:
    """A running allocator and operator, and the handles tests drive them with."""

    clock: ManualClock
    emulator: ProviderEmulator
    allocator: AllocatorDriver
    cluster: Cluster
    metrics: OperatorMetrics
    providers: dict[str, Provider]
    gate: Gate
    config: OperatorConfig | None = None
    _stops: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def runs(self, task: str) -> float:
        return self.metrics.value("voiceslot_operator_maintenance_runs_total", task=task)

    async def maintenance_rounds(self, task: str, rounds: int = 2) -> None:
        """Wait until the operator completed ``rounds`` more RunMaintenance calls of
        ``task``: at least one of them started after this call."""
        start = self.runs(task)
        await eventually(lambda: self.runs(task) >= start + rounds, what=f"{rounds} {task} rounds")

    async def observed(self, name: str, phase: str, namespace: str = NAMESPACE) -> dict[str, Any]:
        """Wait until the operator has mirrored ``phase`` into the VoiceSlot's status."""
        return await eventually(
            lambda: (
                self.cluster.status(name, namespace)
                if self.cluster.status(name, namespace).get("phase") == phase
                else None
            ),
            what=f"VoiceSlot {name} phase {phase}",
        )

    async def watched_voice(self, name: str, **spec: Any) -> pb.Voice:
        """A READY voice (no lease) and a VoiceSlot ``name`` for it, observed Ready."""
        voice = await self.allocator.ready_voice(name)
        await self.cluster.create(name, voice.voice_id, **spec)
        await self.observed(name, "Ready")
        return voice

    async def condition(
        self, name: str, type_: str, status: str, namespace: str = NAMESPACE, **kw: Any
    ) -> dict[str, Any]:
        """Wait until the VoiceSlot's ``type_`` condition has ``status``; returns it."""
        return await eventually(
            lambda: (
                (c := self.cluster.condition(name, type_, namespace)).get("status") == status and c
            ),
            what=f"{type_}={status} on {name}",
            **kw,
        )

    def counter(self, name: str, **labels: str) -> float:
        return self.metrics.value(f"voiceslot_operator_{name}", **labels)

    async def counted(self, name: str, more: int = 3, **labels: str) -> None:
        """Wait until an operator counter moved by ``more`` from now."""
        start = self.counter(name, **labels)
        await eventually(
            lambda: self.counter(name, **labels) >= start + more, what=f"{more} more {name}"
        )

    def live_remote_ids(self) -> set[str]:
        return {v.voice_id for v in self.emulator.state.live_voices("elevenlabs")}


@pytest.fixture
def emulator() -> Iterator[ProviderEmulator]:
    with ProviderEmulator() as emulator:
        yield emulator


@pytest.fixture(params=["clusterwide", "namespaced"])
def watch_mode(request: pytest.FixtureRequest) -> str:
    """How the operator watches: every namespace, or the named ones (chart default)."""
    return str(request.param)


@pytest.fixture
async def start_stack(
    tmp_path: Path, k8s: ApiServerEmulator, emulator: ProviderEmulator, watch_mode: str
) -> AsyncIterator[Callable[..., Awaitable[Stack]]]:
    """``await start_stack(capacity=..., wrap=..., dispatch_interval_s=..., **operator_config)``:
    ``wrap`` wraps each provider adapter (to observe calls); ``operator_config`` overrides
    the operator's settings."""
    stacks: list[Stack] = []
    session = aiohttp.ClientSession()

    async def start(
        *,
        capacity: int = 2,
        wrap: Callable[[Provider], Provider] | None = None,
        dispatch_interval_s: float = 0.05,
        **operator_config: Any,
    ) -> Stack:
        clock = ManualClock(datetime.now(UTC))
        settings = Settings(
            data_dir=tmp_path / "data",
            listen="127.0.0.1:0",
            log_format="console",
            default_provider=PROVIDER,
            providers=(
                # A long client timeout: a hanging clone stays in flight (ALLOCATING) until
                # the test is over, as a clone whose dispatcher died would.
                emulator.provider_config(
                    "elevenlabs", name=PROVIDER, capacity=capacity, timeout_s=120
                ),
            ),
            auth=AuthConfig(api_keys=TEST_KEYS),
            allocator=AllocatorConfig(
                maintenance_interval_s=None,  # the operator drives maintenance (as in the chart)
                dispatch_interval_s=dispatch_interval_s,
                idle_reclaim_after_s=IDLE_AFTER_S,
                allocation_timeout_s=ALLOCATION_TIMEOUT_S,
            ),
        )
        storage = build_storage(settings)
        providers = build_providers(settings, storage=storage)
        if wrap is not None:
            providers = {name: wrap(p) for name, p in providers.items()}
        app: AllocatorApp = await build_allocator(
            settings, storage=storage, providers=providers, clock=clock
        )
        server: RunningServer = await start_server(
            listen=settings.listen,
            registrations=[app.registration],
            keys=key_table(settings),
            rate_per_second=1000,
            burst=1000,
        )
        driver = AllocatorDriver(server.port)
        gate = Gate(server.port)
        gate_port = await gate.start()
        metrics = OperatorMetrics()
        stack = Stack(
            clock=clock,
            emulator=emulator,
            allocator=driver,
            cluster=Cluster(k8s, session),
            metrics=metrics,
            providers=providers,
            gate=gate,
        )

        async def stop_allocator() -> None:
            await gate.stop()
            await driver.close()
            await server.stop(0)
            await app.stop(grace_s=0.2)
            for provider in providers.values():
                await provider.aclose()

        stack._stops.append(stop_allocator)
        stacks.append(stack)  # stopped at teardown whatever happens below

        defaults: dict[str, Any] = {
            "allocator_target": f"127.0.0.1:{gate_port}",
            "allocator_api_key": ADMIN_KEY,
            "allocator_timeout_s": 10.0,
            "clusterwide": watch_mode == "clusterwide",
            "namespaces": () if watch_mode == "clusterwide" else k8s.namespaces,
            "reconcile_interval_s": 0.2,
            "idle_reclaim_interval_s": 0.2,
            "stuck_reset_interval_s": 0.2,
            "drift_interval_s": 0.3,
            "mirror_interval_s": 0.3,
            "retry_delay_s": 0.2,
            "retry_max_delay_s": 1.0,
            "mirror_voice_slots": False,
            # Tests run many operators: no fixed ports unless a test asks for them.
            "metrics_port": None,
            "liveness_endpoint": None,
            "mirror_namespace": NAMESPACE,
        }
        config = OperatorConfig(**{**defaults, **operator_config})
        stack.config = config
        # kopf owns the event loop it runs in (at exit it cancels every task created after
        # it started), so it gets a thread and a loop of its own, as kopf's docs advise for
        # embedding; everything else stays in the test's loop.
        stop_flag, ready_flag = threading.Event(), threading.Event()
        failures: list[BaseException] = []
        server_url = str(k8s.url)

        def run_operator() -> None:
            try:
                asyncio.run(
                    serve_operator(
                        config,
                        stop_flag=stop_flag,
                        ready_flag=ready_flag,
                        login=lambda **_: kopf.ConnectionInfo(server=server_url),
                        metrics=metrics,
                    )
                )
            except BaseException as exc:  # reported by the test, not lost in the thread
                failures.append(exc)

        thread = threading.Thread(target=run_operator, name="voiceslot-operator", daemon=True)
        thread.start()
        await eventually(
            lambda: ready_flag.is_set() or not thread.is_alive(), what="the operator to start"
        )
        if failures:
            raise failures[0]

        async def stop_operator() -> None:
            stop_flag.set()
            await asyncio.to_thread(thread.join, 20)
            assert not thread.is_alive(), "the operator did not stop"
            if failures:
                raise failures[0]

        stack._stops.insert(0, stop_operator)  # the operator goes first
        return stack

    try:
        yield start
    finally:
        for stack in stacks:
            for stop in stack._stops:
                await stop()
            stack.cluster.assert_valid()
        await session.close()
