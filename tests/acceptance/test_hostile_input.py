"""Hostile input over real sockets (issue 15): every answer is the right status, short,
and readable by a default client.

A default gRPC client refuses trailers over 8 KiB (soft) / 16 KiB (hard), so an error that
quoted a large request field back arrived as "received metadata size exceeds hard limit"
instead of INVALID_ARGUMENT. These tests use default channels on purpose.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.acceptance.test_errors_and_auth import expect, field_violations
from tests.conftest import ADMIN_KEY, ALICE_KEY, auth
from tests.support import ensure_ready, register, register_requests
from voiceslot.v1 import allocator_pb2 as apb
from voiceslot.v1 import allocator_pb2_grpc, common_pb2, synthesizer_pb2_grpc
from voiceslot.v1 import synthesizer_pb2 as spb

MIB = 1024 * 1024
# Comfortably under the 8 KiB soft limit of a default client's metadata, message and
# details together.
MAX_ERROR_CHARS = 2048
UNKNOWN_VOICE = "v_" + "0" * 32


def assert_short(exc: grpc.aio.AioRpcError) -> None:
    trailers = sum(len(k) + len(v) for k, v in exc.trailing_metadata() or ())
    assert len(exc.details() or "") <= MAX_ERROR_CHARS, len(exc.details())
    assert trailers <= 4 * MAX_ERROR_CHARS, trailers


async def test_health_list_answers_every_service(channel):
    health = health_pb2_grpc.HealthStub(channel)
    listed = await health.List(health_pb2.HealthListRequest())
    statuses = {name: r.status for name, r in listed.statuses.items()}
    serving = health_pb2.HealthCheckResponse.SERVING
    assert statuses[""] == serving
    assert statuses["voiceslot.v1.AllocatorService"] == serving
    assert statuses["voiceslot.v1.SynthesizerService"] == serving


async def test_errors_never_copy_a_large_value_back(channel, sample_wav):
    stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
    md = auth(ALICE_KEY)
    for size in (4096, MIB):
        for field in ("provider", "language", "display_name", "idempotency_key"):
            metadata = {field: "x" * size}
            name = metadata.pop("display_name", "test voice")
            exc = await expect(
                grpc.StatusCode.INVALID_ARGUMENT,
                stub.RegisterVoice(
                    iter(register_requests(sample_wav, name=name, **metadata)), metadata=md
                ),
            )
            assert field_violations(exc) == [f"metadata.{field}"]
            assert_short(exc)
        exc = await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            stub.RunMaintenance(
                apb.RunMaintenanceRequest(provider="x" * size), metadata=auth(ADMIN_KEY)
            ),
        )
        assert field_violations(exc) == ["provider"]
        assert_short(exc)
    # Unicode that percent-encodes to 3-12 bytes per character is bounded too.
    exc = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.RegisterVoice(
            iter(register_requests(sample_wav, provider="\U0001f600" * 100_000)), metadata=md
        ),
    )
    assert_short(exc)
    # A well-formed provider name that is not configured is still named, briefly.
    exc = await expect(
        grpc.StatusCode.NOT_FOUND,
        stub.RunMaintenance(
            apb.RunMaintenanceRequest(provider="nowhere"), metadata=auth(ADMIN_KEY)
        ),
    )
    assert "nowhere" in exc.details()


async def test_synthesize_checks_language_like_register_voice(channel):
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    md = auth(ALICE_KEY)
    for language in ("../../etc/passwd", "en-" + "abcd-" * 819 + "x1", "x" * 4096):
        request = spb.SynthesizeRequest(voice_id=UNKNOWN_VOICE, text="Hello.", language=language)
        exc = await expect(grpc.StatusCode.INVALID_ARGUMENT, synth.Synthesize(request, metadata=md))
        assert field_violations(exc) == ["language"]
        assert_short(exc)

        async def stream(request=request):
            return [
                m
                async for m in synth.SynthesizeStream(
                    spb.SynthesizeStreamRequest(
                        voice_id=request.voice_id, text=request.text, language=request.language
                    ),
                    metadata=md,
                )
            ]

        exc = await expect(grpc.StatusCode.INVALID_ARGUMENT, stream())
        assert field_violations(exc) == ["language"]


async def test_an_admins_owner_must_be_a_user_name(channel, sample_wav):
    stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
    for owner in ("../alice", "al ice", "a" * 129, "ålice"):
        exc = await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            stub.RegisterVoice(
                iter(register_requests(sample_wav, owner=owner)), metadata=auth(ADMIN_KEY)
            ),
        )
        assert field_violations(exc) == ["metadata.owner"]
    voice = (
        await stub.RegisterVoice(
            iter(register_requests(sample_wav, owner="carol@example.org")),
            metadata=auth(ADMIN_KEY),
        )
    ).voice
    assert voice.owner == "carol@example.org"


async def test_maintenance_tasks_are_deduplicated_and_bounded(channel):
    stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
    md = auth(ADMIN_KEY)
    expire = apb.MAINTENANCE_TASK_EXPIRE_LEASES
    results = await stub.RunMaintenance(
        apb.RunMaintenanceRequest(tasks=[expire, expire, apb.MAINTENANCE_TASK_RESET_STUCK, expire]),
        metadata=md,
    )
    assert [r.task for r in results.results] == [expire, apb.MAINTENANCE_TASK_RESET_STUCK]
    exc = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.RunMaintenance(apb.RunMaintenanceRequest(tasks=[expire] * 1_000_000), metadata=md),
    )
    assert field_violations(exc) == ["tasks"]


async def test_batch_idempotency_key_is_checked_before_it_is_stored(channel):
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    exc = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        synth.CreateBatchJob(
            spb.CreateBatchJobRequest(
                voice_id=UNKNOWN_VOICE,
                items=[spb.BatchItemInput(name="a", text="Hello.")],
                idempotency_key="k" * MIB,
            ),
            metadata=auth(ADMIN_KEY),
        ),
    )
    assert field_violations(exc) == ["idempotency_key"]
    assert_short(exc)


async def test_a_letter_stacked_with_accents_is_refused_at_once(channel):
    # "a" + N x U+0301, under the 5000-character limit: N = 1000 made 761 sentences and
    # 200 s of audio, N = 4000 no answer within 30 s. Now: refused before any work.
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    for marks in (1000, 2000, 4000):
        request = spb.SynthesizeRequest(voice_id=UNKNOWN_VOICE, text="a" + "\u0301" * marks)
        exc = await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            synth.Synthesize(request, metadata=auth(ALICE_KEY), timeout=5),
        )
        assert field_violations(exc) == ["text"]
        assert "combining marks" in exc.details()


async def test_unary_synthesis_too_large_for_one_message_names_the_stream(channel):
    # 5000 characters of prose as 48 kHz WAV is over 16 MiB of audio: it failed after 6 s
    # of work with "Sent message larger than max". Now it is refused up front.
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    prose = ("The quick brown fox jumps over the lazy dog, and then it rests. " * 80)[:5000]
    request = spb.SynthesizeRequest(
        voice_id=UNKNOWN_VOICE,
        text=prose,
        format=common_pb2.AudioFormat(encoding=common_pb2.AUDIO_ENCODING_WAV, sample_rate_hz=48000),
    )
    exc = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        synth.Synthesize(request, metadata=auth(ALICE_KEY), timeout=5),
    )
    assert field_violations(exc) == ["text"]
    assert "SynthesizeStream" in exc.details()
    assert_short(exc)


async def test_an_unknown_voice_is_named_once(channel):
    # The synthesizer relays the allocator's NOT_FOUND; it used to wrap the message in a
    # second "voice ... not found".
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    request = spb.SynthesizeRequest(voice_id=UNKNOWN_VOICE, text="Hello.")
    exc = await expect(
        grpc.StatusCode.NOT_FOUND, synth.Synthesize(request, metadata=auth(ALICE_KEY))
    )
    assert exc.details() == f"voice '{UNKNOWN_VOICE}' not found"


async def test_a_language_the_engine_does_not_speak_is_the_callers_to_fix(channel, sample_wav):
    # A well-formed tag the engine does not speak came back UNAVAILABLE ("retry").
    md = auth(ALICE_KEY)
    voice = await register(channel, md, sample_wav)
    await ensure_ready(channel, md, voice.voice_id)
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    request = spb.SynthesizeRequest(voice_id=voice.voice_id, text="Hello.", language="zz")
    exc = await expect(grpc.StatusCode.INVALID_ARGUMENT, synth.Synthesize(request, metadata=md))
    assert "'zz' is not supported" in exc.details()
