"""Bad input and bad callers get the right gRPC status with useful details, over real
sockets: never INTERNAL for a client's mistake, and nothing is stored."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.conftest import ADMIN_KEY, ALICE_KEY, BOB_KEY, auth
from tests.support import register, register_requests
from voiceslot.v1 import allocator_pb2 as apb
from voiceslot.v1 import allocator_pb2_grpc, synthesizer_pb2_grpc
from voiceslot.v1 import synthesizer_pb2 as spb


def field_violations(exc: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(exc)
    assert status is not None, "no rich status details"
    fields = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return fields


async def expect(code: grpc.StatusCode, call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value


async def test_unauthenticated_and_unknown_keys(channel):
    stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
    await expect(grpc.StatusCode.UNAUTHENTICATED, stub.ListVoices(apb.ListVoicesRequest()))
    await expect(
        grpc.StatusCode.UNAUTHENTICATED,
        stub.ListVoices(apb.ListVoicesRequest(), metadata=auth("nope")),
    )
    ok = await stub.ListVoices(apb.ListVoicesRequest(), metadata=(("x-api-key", ALICE_KEY),))
    assert list(ok.voices) == []


async def test_admin_only_rpcs_refuse_users(channel):
    stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
    await expect(
        grpc.StatusCode.PERMISSION_DENIED,
        stub.ListProviders(apb.ListProvidersRequest(), metadata=auth(ALICE_KEY)),
    )
    await expect(
        grpc.StatusCode.PERMISSION_DENIED,
        stub.RunMaintenance(apb.RunMaintenanceRequest(), metadata=auth(ALICE_KEY)),
    )
    # Batch jobs are open to users (for their own voices): not admin only.
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        synth.CreateBatchJob(spb.CreateBatchJobRequest(), metadata=auth(ALICE_KEY)),
    )
    providers = await stub.ListProviders(apb.ListProvidersRequest(), metadata=auth(ADMIN_KEY))
    assert [(p.name, p.capacity) for p in providers.providers] == [("local", 4)]


async def test_malformed_requests_name_the_field(channel, sample_wav):
    stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
    md = auth(ALICE_KEY)
    exc = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.GetVoice(apb.GetVoiceRequest(voice_id="../etc"), metadata=md),
    )
    assert field_violations(exc) == ["voice_id"]
    exc = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.ListVoices(apb.ListVoicesRequest(page_size=-1), metadata=md),
    )
    assert field_violations(exc) == ["page_size"]
    exc = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.ListVoices(apb.ListVoicesRequest(page_token="%%"), metadata=md),
    )
    assert field_violations(exc) == ["page_token"]
    exc = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.RegisterVoice(iter(register_requests(sample_wav, name="")), metadata=md),
    )
    assert field_violations(exc) == ["metadata.display_name"]
    exc = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.RegisterVoice(
            iter(register_requests(b"RIFF not really a wave file" * 100)), metadata=md
        ),
    )
    assert field_violations(exc) == ["sample"]
    exc = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.RegisterVoice(iter(register_requests(sample_wav, provider="nowhere")), metadata=md),
    )
    assert field_violations(exc) == ["metadata.provider"]
    # Nothing was stored by any of the rejected registrations.
    assert (
        list((await stub.ListVoices(apb.ListVoicesRequest(), metadata=auth(ADMIN_KEY))).voices)
        == []
    )


async def test_oversize_sample_is_resource_exhausted(channel, make_settings):
    stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
    cap = make_settings().allocator.sample_max_bytes
    huge = b"\0" * (cap + 1)
    await expect(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        stub.RegisterVoice(iter(register_requests(huge)), metadata=auth(ALICE_KEY)),
    )


async def test_invalid_utf8_is_invalid_argument_not_internal(channel):
    # Hand-encoded SynthesizeRequest: field 2 (text), wire type 2, bytes that are not UTF-8.
    voice_id = b"v_" + b"0" * 32
    raw = b"\x0a" + bytes([len(voice_id)]) + voice_id + b"\x12\x03\xff\xfe\xfd"
    call = channel.unary_unary(
        "/voiceslot.v1.SynthesizerService/Synthesize",
        request_serializer=lambda b: b,
        response_deserializer=spb.SynthesizeResponse.FromString,
    )
    exc = await expect(grpc.StatusCode.INVALID_ARGUMENT, call(raw, metadata=auth(ALICE_KEY)))
    assert "UTF-8" in exc.details()


async def test_text_rules(channel, sample_wav):
    md = auth(ALICE_KEY)
    voice = await register(channel, md, sample_wav)
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    for text in ["", "   \n\t  "]:
        exc = await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            synth.Synthesize(
                spb.SynthesizeRequest(voice_id=voice.voice_id, text=text), metadata=md
            ),
        )
        assert field_violations(exc) == ["text"]
    exc = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        synth.Synthesize(
            spb.SynthesizeRequest(voice_id=voice.voice_id, text="word " * 2000), metadata=md
        ),
    )
    assert field_violations(exc) == ["text"]
    assert "5000" in exc.details()


async def test_other_users_voices_are_not_found(channel, sample_wav):
    voice = await register(channel, auth(ALICE_KEY), sample_wav)
    stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
    bob = auth(BOB_KEY)
    await expect(
        grpc.StatusCode.NOT_FOUND,
        stub.GetVoice(apb.GetVoiceRequest(voice_id=voice.voice_id), metadata=bob),
    )
    await expect(
        grpc.StatusCode.NOT_FOUND,
        stub.EnsureActiveVoice(apb.EnsureActiveVoiceRequest(voice_id=voice.voice_id), metadata=bob),
    )
    await expect(
        grpc.StatusCode.NOT_FOUND,
        stub.DeleteVoice(apb.DeleteVoiceRequest(voice_id=voice.voice_id), metadata=bob),
    )
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    await expect(
        grpc.StatusCode.NOT_FOUND,
        synth.Synthesize(spb.SynthesizeRequest(voice_id=voice.voice_id, text="hi"), metadata=bob),
    )
    # Still there for its owner and for admins.
    assert (
        await stub.GetVoice(apb.GetVoiceRequest(voice_id=voice.voice_id), metadata=auth(ADMIN_KEY))
    ).voice.owner == "alice"


async def test_idempotent_registration(channel, sample_wav):
    md = auth(ALICE_KEY)
    first = await register(channel, md, sample_wav, idempotency_key="rec-1")
    again = await register(channel, md, sample_wav, idempotency_key="rec-1")
    assert again.voice_id == first.voice_id
    stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
    assert len((await stub.ListVoices(apb.ListVoicesRequest(), metadata=md)).voices) == 1


async def test_answers_carry_the_request_id_asked_for_and_errors_always(channel):
    stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
    call = stub.ListVoices(
        apb.ListVoicesRequest(), metadata=(*auth(ALICE_KEY), ("x-request-id", "trace-me-42"))
    )
    await call
    assert ("x-request-id", "trace-me-42") in list(await call.trailing_metadata())
    # A malformed one is replaced, and the caller told which; a caller who sent none is
    # not sent one on success.
    replaced = stub.ListVoices(
        apb.ListVoicesRequest(), metadata=(*auth(ALICE_KEY), ("x-request-id", "x" * 129))
    )
    await replaced
    assert len(dict(await replaced.trailing_metadata())["x-request-id"]) == 32
    plain = stub.ListVoices(apb.ListVoicesRequest(), metadata=auth(ALICE_KEY))
    await plain
    assert "x-request-id" not in dict(await plain.trailing_metadata())
    # Errors carry it too, beside their rich status details; without one, one is made.
    failing = stub.GetVoice(apb.GetVoiceRequest(voice_id="bad"), metadata=auth(ALICE_KEY))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await failing
    trailing = dict(info.value.trailing_metadata())
    assert len(trailing["x-request-id"]) == 32 and "grpc-status-details-bin" in trailing


async def test_per_caller_rate_limit(make_settings):
    from tests.conftest import TEST_KEYS
    from voiceslot.cli.runtime import Runtime
    from voiceslot.config import AuthConfig

    settings = make_settings(
        auth=AuthConfig(api_keys=TEST_KEYS, rate_limit_per_second=0.5, rate_limit_burst=3)
    )
    runtime = await Runtime(settings).start(only=("allocator",))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as ch:
            stub = allocator_pb2_grpc.AllocatorServiceStub(ch)
            for _ in range(3):
                await stub.ListVoices(apb.ListVoicesRequest(), metadata=auth(ALICE_KEY))
            exc = await expect(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                stub.ListVoices(apb.ListVoicesRequest(), metadata=auth(ALICE_KEY)),
            )
            status = rpc_status.from_call(exc)
            retry = error_details_pb2.RetryInfo()
            assert any(d.Unpack(retry) for d in status.details)
            # Limits are per caller: bob still gets through.
            await stub.ListVoices(apb.ListVoicesRequest(), metadata=auth(BOB_KEY))
    finally:
        await runtime.stop()
