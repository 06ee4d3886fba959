"""Metrics (Prometheus) and traces (OpenTelemetry), defined once for every component.

Metrics: counters and histograms are recorded where things happen; the allocator's
gauges (backlog, slots, breaker, stuck allocations, add/edit budget) are state in the
database, refreshed by the allocator itself every ``allocator.gauge_interval_s`` (see
``allocator_svc.gauges``). Under ``serve --workers`` every worker refreshes the same
values from the same database, so those gauges merge as "most recent", not as a sum.

Traces are off unless the standard OpenTelemetry variables ask for them
(``configure_tracing``): ``OTEL_TRACES_EXPORTER=otlp`` (or ``console``), or an
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` with no exporter
named; ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` keep them off. Every
other ``OTEL_*`` variable (service name, resource attributes, sampler, batching, OTLP
headers and TLS) is read by the SDK and the exporter themselves. While off, ``span`` and
the server interceptor skip tracing entirely after one attribute check, so the hot path
pays nothing for it. Context travels between services as W3C ``traceparent`` gRPC
metadata: ``trace_metadata`` on the client side, ``extract`` in the server interceptor.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from voiceslot.logs import get_logger

log = get_logger(__name__)


class _Tracing:
    """Whether spans are made, and by which tracer. One object, so that the check on the
    hot path is a single attribute read."""

    on: bool = False
    tracer: trace.Tracer = trace.NoOpTracer()
    provider: Any = None


TRACING = _Tracing()


def enable_tracing(provider: trace.TracerProvider) -> None:
    """Make spans with ``provider`` from now on (tests pass one with an in-memory
    exporter; ``configure_tracing`` one with the exporter the environment names)."""
    TRACING.provider = provider
    TRACING.tracer = provider.get_tracer("voiceslot")
    TRACING.on = True


def disable_tracing() -> None:
    TRACING.on = False
    TRACING.tracer = trace.NoOpTracer()
    TRACING.provider = None


def _exporter_wanted(env: Mapping[str, str]) -> str | None:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    named = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named:
        # Only the first of a comma-separated list: we install one exporter.
        first = named.split(",")[0].strip()
        return None if first == "none" else first
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return "otlp"
    return None


def configure_tracing(env: Mapping[str, str] | None = None) -> bool:
    """Install an SDK tracer provider exporting over OTLP/gRPC (or to the console) when
    the environment asks for traces; True when tracing is on. The provider also becomes
    OpenTelemetry's global one, so libraries that trace find it."""
    env = os.environ if env is None else env
    kind = _exporter_wanted(env)
    if kind is None:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    exporter: SpanExporter
    if kind == "otlp":
        protocol = env.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        )
        if protocol != "grpc":
            log.warning("only OTLP over gRPC is installed; using it", protocol=protocol)
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        exporter = OTLPSpanExporter(endpoint=endpoint or None)  # None: the exporter's default
    elif kind == "console":
        exporter = ConsoleSpanExporter()
    else:
        log.warning("unknown OTEL_TRACES_EXPORTER; tracing stays off", exporter=kind)
        return False
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the default
    # name only applies when neither names the service.
    resource = Resource.create({"service.name": "voiceslot"}).merge(Resource.create())
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    enable_tracing(provider)
    log.info("tracing on", exporter=kind)
    return True


SHUTDOWN_TIMEOUT_S = 5.0


def shutdown_tracing() -> None:
    """Send the spans still batched (the process may end with os._exit, which skips the
    SDK's own exit hook), waiting at most ``SHUTDOWN_TIMEOUT_S``: an unreachable
    collector would otherwise hold the exit for the exporter's retries."""
    provider = TRACING.provider
    disable_tracing()
    if provider is not None and hasattr(provider, "shutdown"):
        flusher = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
        flusher.start()
        flusher.join(SHUTDOWN_TIMEOUT_S)


@contextmanager
def _no_span() -> Iterator[trace.Span]:
    yield trace.INVALID_SPAN


@contextmanager
def _span(name: str, attributes: dict[str, Any]) -> Iterator[trace.Span]:
    with TRACING.tracer.start_as_current_span(
        name, attributes={k: str(v) for k, v in attributes.items()}
    ) as s:
        yield s


def span(name: str, **attributes: Any) -> Any:
    """A child span of the current one around a provider, storage or database step."""
    if not TRACING.on:
        return _no_span()
    return _span(name, attributes)


@dataclass(frozen=True)
class ServerSpan:
    span: trace.Span
    token: object


def start_server_span(method: str, metadata: Iterable[tuple[str, Any]]) -> ServerSpan:
    """A SERVER span for one incoming call (``/pkg.Service/Method``), child of the
    caller's span when its metadata carries a ``traceparent``; current until
    ``end_server_span``. Only called while tracing is on."""
    parent = propagate.extract({k: v for k, v in metadata if isinstance(v, str)})
    service, _, name = method.lstrip("/").partition("/")
    span = TRACING.tracer.start_span(
        f"{service}/{name}",
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
    )
    return ServerSpan(span, otel_context.attach(trace.set_span_in_context(span, parent)))


def fail_server_span(code_name: str, code_value: int, error: Exception) -> None:
    """Mark the current call's span failed with its gRPC status."""
    current = trace.get_current_span()
    current.set_attribute("rpc.grpc.status_code", code_value)
    current.set_status(trace.Status(trace.StatusCode.ERROR, f"{code_name}: {error}"[:200]))


def end_server_span(server_span: ServerSpan) -> None:
    otel_context.detach(server_span.token)  # type: ignore[arg-type]
    server_span.span.end()


def trace_metadata() -> tuple[tuple[str, str], ...]:
    """The current trace context as gRPC metadata (``traceparent``, ``tracestate``), for
    a call to another service; empty while tracing is off."""
    if not TRACING.on:
        return ()
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())


class Traced:
    """``target`` (a provider adapter, a storage) with every public call in a CLIENT span
    named ``<kind>/<method>`` (beside the steps' own ``provider.clone``-style spans): coroutines for as long as they run, async iterators
    (listings, streamed synthesis) until they end. Wrapped only while tracing is on (see
    ``voiceslot.cli.runtime``), so without tracing calls go straight to the target."""

    def __init__(self, target: Any, kind: str, **attributes: str) -> None:
        self._target = target
        self._kind = kind
        self._attributes = attributes

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name.startswith("_") or not callable(value) or isinstance(value, type):
            return value
        span_name = f"{self._kind}/{name}"

        def call(*args: Any, **kwargs: Any) -> Any:
            result = value(*args, **kwargs)
            if inspect.isawaitable(result):
                return self._awaited(span_name, result)
            if hasattr(result, "__aiter__"):
                return self._iterated(span_name, result)
            return result

        return call

    async def _awaited(self, name: str, work: Awaitable[Any]) -> Any:
        with TRACING.tracer.start_as_current_span(
            name, kind=trace.SpanKind.CLIENT, attributes=self._attributes
        ):
            return await work

    async def _iterated(self, name: str, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        # Not made current: a generator's context is its consumer's, between items.
        span = TRACING.tracer.start_span(
            name, kind=trace.SpanKind.CLIENT, attributes=self._attributes
        )
        try:
            async for item in items:
                yield item
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:  # a consumer that stopped early closes the source too
                await aclose()
            span.end()


def trace_engine(engine: Any, database: str) -> None:
    """A ``db.transaction`` span per transaction of ``engine`` (a SQLAlchemy engine,
    sync or async), from BEGIN to COMMIT or ROLLBACK, counting its statements: one span
    per group of statements the repositories run together. Child of the span current
    when the transaction began (SQLAlchemy's asyncio greenlets carry the caller's
    context); transactions outside any trace make none. Installed only while tracing is
    on."""
    from sqlalchemy import event

    sync = getattr(engine, "sync_engine", engine)
    attributes = {"db.system": sync.dialect.name, "db.name": database}

    def begin(conn: Any) -> None:
        # Only inside a trace: background loops (dispatcher polls, gauge refreshes) would
        # otherwise start a one-span trace several times a second.
        if TRACING.on and trace.get_current_span().is_recording():
            conn.info["otel.span"] = TRACING.tracer.start_span(
                "db.transaction", kind=trace.SpanKind.CLIENT, attributes=attributes
            )
            conn.info["otel.statements"] = 0

    def statement(conn: Any, *_args: Any) -> None:
        if "otel.span" in conn.info:
            conn.info["otel.statements"] += 1

    def finish(conn: Any, outcome: str) -> None:
        span = conn.info.pop("otel.span", None)
        if span is not None:
            span.set_attribute("db.statements", conn.info.pop("otel.statements", 0))
            span.set_attribute("db.outcome", outcome)
            span.end()

    event.listen(sync, "begin", begin)
    event.listen(sync, "before_cursor_execute", statement)
    event.listen(sync, "commit", lambda conn: finish(conn, "commit"))
    event.listen(sync, "rollback", lambda conn: finish(conn, "rollback"))


RPCS = Counter("voiceslot_rpc_total", "gRPC calls handled", ["method", "code"])
RPC_SECONDS = Histogram("voiceslot_rpc_seconds", "gRPC call duration", ["method"])

ALLOCATIONS = Counter(
    "voiceslot_allocations_total", "Allocation attempts by outcome", ["provider", "outcome"]
)
ALLOCATION_SECONDS = Histogram(
    "voiceslot_allocation_seconds",
    "Time from dispatch to READY",
    ["provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
RECLAIMS = Counter("voiceslot_reclaims_total", "Slots reclaimed", ["provider", "reason"])
# Allocator state gauges: the same value in every worker (read from one database).
_SHARED = "mostrecent"
QUEUE_DEPTH = Gauge(
    "voiceslot_queue_depth",
    "Allocation requests waiting",
    ["provider"],
    multiprocess_mode=_SHARED,
)
QUEUE_OLDEST_AGE = Gauge(
    "voiceslot_queue_oldest_age_seconds",
    "Age of the oldest waiting request (0 when none waits)",
    ["provider"],
    multiprocess_mode=_SHARED,
)
SLOTS_USED = Gauge(
    "voiceslot_slots_used", "Slots held or being acquired", ["provider"], multiprocess_mode=_SHARED
)
SLOTS_CAPACITY = Gauge(
    "voiceslot_slots_capacity",
    "Slots the account may hold",
    ["provider"],
    multiprocess_mode=_SHARED,
)
BREAKER_OPEN = Gauge(
    "voiceslot_breaker_open",
    "1 while the provider's breaker is open",
    ["provider"],
    multiprocess_mode=_SHARED,
)
STUCK_ALLOCATIONS = Gauge(
    "voiceslot_stuck_allocations",
    "Allocations whose dispatch lease expired (their dispatcher died or hung)",
    ["provider"],
    multiprocess_mode=_SHARED,
)
ADD_EDIT_REMAINING = Gauge(
    "voiceslot_add_edit_remaining",
    "Clone operations left this period where the provider caps them (absent when unknown)",
    ["provider"],
    multiprocess_mode=_SHARED,
)
GAUGES_REFRESHED = Gauge(
    "voiceslot_gauges_refreshed_timestamp_seconds",
    "When the allocator last refreshed its state gauges (Unix time)",
    multiprocess_mode="max",
)
RECONCILE_DRIFT = Counter(
    "voiceslot_reconcile_drift_total",
    "Differences reconciliation found between the database and a provider",
    ["provider", "kind"],
)
MAINTENANCE = Counter(
    "voiceslot_maintenance_changes_total", "Voices changed by maintenance", ["task"]
)

SYNTH_SECONDS = Histogram(
    "voiceslot_synthesis_seconds",
    "Whole synthesis duration",
    ["provider", "mode"],
)
_FIRST_AUDIO_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4)
SYNTH_FIRST_CHUNK_SECONDS = Histogram(
    "voiceslot_synthesis_first_chunk_seconds",
    "Time to the first streamed chunk",
    ["provider"],
    buckets=_FIRST_AUDIO_BUCKETS,
)
LIVE_FIRST_AUDIO_SECONDS = Histogram(
    "voiceslot_live_first_audio_seconds",
    "Live turns: from a sentence's end becoming certain to its first audio",
    ["provider"],
    buckets=_FIRST_AUDIO_BUCKETS,
)
SYNTH_RTF = Histogram(
    "voiceslot_synthesis_real_time_factor",
    "Synthesis time / audio duration",
    ["provider"],
    buckets=(0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2, 4, 8),
)
BATCH_ITEMS = Counter("voiceslot_batch_items_total", "Batch items processed", ["outcome"])


def serve_metrics(port: int, *, addr: str = "0.0.0.0") -> None:
    start_http_server(port, addr=addr)
