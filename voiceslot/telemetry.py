"""Metrics (Prometheus) and traces (OpenTelemetry), defined once for every component.

Spans use the global tracer provider: without an exporter configured they cost next to
nothing; deployments configure one through the standard OTEL_* environment variables.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram, start_http_server

_tracer = trace.get_tracer("voiceslot")


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[trace.Span]:
    with _tracer.start_as_current_span(
        name, attributes={k: str(v) for k, v in attributes.items()}
    ) as s:
        yield s


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
QUEUE_DEPTH = Gauge("voiceslot_queue_depth", "Allocation requests waiting", ["provider"])
QUEUE_OLDEST_AGE = Gauge(
    "voiceslot_queue_oldest_age_seconds", "Age of the oldest waiting request", ["provider"]
)
SLOTS_USED = Gauge("voiceslot_slots_used", "Slots held or being acquired", ["provider"])
SLOTS_CAPACITY = Gauge("voiceslot_slots_capacity", "Slots the account may hold", ["provider"])
BREAKER_OPEN = Gauge(
    "voiceslot_breaker_open", "1 while the provider's breaker is open", ["provider"]
)
MAINTENANCE = Counter(
    "voiceslot_maintenance_changes_total", "Voices changed by maintenance", ["task"]
)

SYNTH_SECONDS = Histogram(
    "voiceslot_synthesis_seconds",
    "Whole synthesis duration",
    ["provider", "mode"],
)
SYNTH_FIRST_CHUNK_SECONDS = Histogram(
    "voiceslot_synthesis_first_chunk_seconds",
    "Time to the first streamed chunk",
    ["provider"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4),
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
