"""Traces cross the services: a synthesis call's span and the allocator's span for the
lease it asked for share one trace (W3C traceparent in gRPC metadata, real sockets),
recorded by the SDK's in-memory exporter. Off by default, where nothing is traced."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.conftest import ALICE_KEY, auth
from tests.support import ensure_ready, register
from voiceslot import telemetry
from voiceslot.v1 import allocator_pb2 as apb
from voiceslot.v1 import allocator_pb2_grpc, common_pb2, synthesizer_pb2_grpc
from voiceslot.v1 import synthesizer_pb2 as spb

SYNTHESIZE = "voiceslot.v1.SynthesizerService/Synthesize"
ENSURE = "voiceslot.v1.AllocatorService/EnsureActiveVoice"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.enable_tracing(provider)
    try:
        yield exporter
    finally:
        telemetry.disable_tracing()
        provider.shutdown()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


async def test_synthesis_and_allocator_spans_share_one_trace(spans, channel, sample_wav):
    md = auth(ALICE_KEY)
    voice = await register(channel, md, sample_wav)
    ready = await ensure_ready(channel, md, voice.voice_id)
    await allocator_pb2_grpc.AllocatorServiceStub(channel).ReleaseLease(
        apb.ReleaseLeaseRequest(lease_id=ready.ready.lease.lease_id), metadata=md
    )
    spans.clear()

    await synthesizer_pb2_grpc.SynthesizerServiceStub(channel).Synthesize(
        spb.SynthesizeRequest(
            voice_id=voice.voice_id,
            text="Hello there.",
            format=common_pb2.AudioFormat(encoding=common_pb2.AUDIO_ENCODING_WAV),
        ),
        metadata=md,
    )

    [synthesis] = named(spans, SYNTHESIZE)
    assert synthesis.kind == SpanKind.SERVER and synthesis.parent is None
    trace_id = synthesis.context.trace_id
    by_id = {s.context.span_id: s for s in spans.get_finished_spans()}
    ensures = [s for s in named(spans, ENSURE) if s.context.trace_id == trace_id]
    assert ensures, [(s.name, s.context.trace_id) for s in spans.get_finished_spans()]
    for ensure in ensures:
        # Its parent came over the wire, and is the synthesis span or one of its children.
        assert ensure.parent is not None and ensure.parent.is_remote
        parent = by_id[ensure.parent.span_id]
        while parent.parent is not None and not parent.parent.is_remote:
            parent = by_id[parent.parent.span_id]
        assert parent is synthesis
    assert synthesis.attributes["rpc.method"] == "Synthesize"


async def test_provider_storage_and_database_work_are_child_spans(spans, channel, sample_wav):
    md = auth(ALICE_KEY)
    voice = await register(channel, md, sample_wav)
    await ensure_ready(channel, md, voice.voice_id)
    [put] = named(spans, "storage.put_sample")
    [register_call] = named(spans, "voiceslot.v1.AllocatorService/RegisterVoice")
    assert put.parent is not None and put.parent.span_id == register_call.context.span_id
    [clone_step] = named(spans, "provider.clone")
    [clone_call] = named(spans, "provider/clone")
    assert clone_call.parent is not None and clone_call.parent.span_id == clone_step.context.span_id
    assert clone_call.attributes["provider"] == "local"
    assert named(spans, "storage/put") and named(spans, "storage/get")
    # Database work: one span per transaction, inside the call or step that ran it.
    transactions = named(spans, "db.transaction")
    assert transactions and all(t.parent is not None for t in transactions)
    in_register = [t for t in transactions if t.parent.span_id == register_call.context.span_id]
    assert in_register and in_register[0].attributes["db.outcome"] == "commit"
    assert in_register[0].attributes["db.statements"] >= 1


async def test_failed_calls_are_marked_with_their_status(spans, channel):
    stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
    with pytest.raises(Exception, match="NOT_FOUND"):
        await stub.GetVoice(apb.GetVoiceRequest(voice_id="v_" + "0" * 32), metadata=auth(ALICE_KEY))
    # The status reaches the caller before the server's span ends: wait for it.
    for _ in range(100):
        if calls := named(spans, "voiceslot.v1.AllocatorService/GetVoice"):
            break
        await asyncio.sleep(0.02)
    [call] = calls
    assert call.status.status_code == StatusCode.ERROR
    assert call.attributes["rpc.grpc.status_code"] == 5


def test_tracing_is_off_unless_the_environment_asks():
    assert not telemetry.TRACING.on
    assert telemetry.trace_metadata() == ()
    with telemetry.span("anything") as s:
        assert not s.is_recording()
    wanted = telemetry._exporter_wanted
    assert wanted({}) is None
    assert wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}) == "otlp"
    assert wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}) == "otlp"
    assert wanted({"OTEL_TRACES_EXPORTER": "otlp"}) == "otlp"
    assert wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"}) is None
    assert wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}) is None
    assert telemetry.configure_tracing({}) is False
