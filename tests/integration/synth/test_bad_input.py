"""Bad input to the synthesizer over real gRPC: each case gets its own status code and
field, and nothing reaches the provider or storage. Fills the gaps left by
tests/acceptance/test_errors_and_auth.py and test_batch_jobs.py: the streaming call, the
text limit's exact boundary, formats, other users' voices, batch items' bytes and limits,
and item names that are accepted yet never reach a storage path."""

from __future__ import annotations

import re

import grpc
import pytest

from tests.acceptance.test_errors_and_auth import expect, field_violations
from tests.conftest import ADMIN_KEY, ALICE_KEY, BOB_KEY, auth
from voiceslot.config import SynthConfig
from voiceslot.storage.local import LocalStorage
from voiceslot.testing.emulator import ELEVENLABS, Op
from voiceslot.v1 import common_pb2, synthesizer_pb2_grpc
from voiceslot.v1 import synthesizer_pb2 as spb

from .conftest import ready_voice

MAX_CHARS = 300
MAX_ITEMS = 5
UNKNOWN_VOICE = "v_" + "0" * 32


def varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, written by hand so it may hold invalid UTF-8."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


@pytest.fixture
async def setup(start_runtime, open_channel, sample_wav):
    rt = await start_runtime(
        synth=SynthConfig(max_text_chars=MAX_CHARS, max_batch_items=MAX_ITEMS, batch_workers=1)
    )
    channel = open_channel(rt)
    voice = await ready_voice(channel, auth(ALICE_KEY), sample_wav)
    return rt, channel, voice


async def stored_audio(rt) -> list[str]:
    storage = rt.synth.worker.storage
    assert isinstance(storage, LocalStorage)
    return [o.key async for o in storage.list("audio/")]


def speak(channel, rpc: str, request_bytes: bytes, md) -> object:
    """Call Synthesize or SynthesizeStream with raw request bytes; awaitable either way."""
    method = "Synthesize" if rpc == "unary" else "SynthesizeStream"
    path = f"/voiceslot.v1.SynthesizerService/{method}"
    if rpc == "unary":
        return channel.unary_unary(
            path,
            request_serializer=lambda b: b,
            response_deserializer=spb.SynthesizeResponse.FromString,
        )(request_bytes, metadata=md)

    async def drain() -> list:
        call = channel.unary_stream(
            path,
            request_serializer=lambda b: b,
            response_deserializer=spb.SynthesizeStreamResponse.FromString,
        )(request_bytes, metadata=md)
        return [m async for m in call]

    return drain()


def request(voice_id: str, text: str, fmt: common_pb2.AudioFormat | None = None) -> bytes:
    message = spb.SynthesizeRequest(voice_id=voice_id, text=text)
    if fmt is not None:
        message.format.CopyFrom(fmt)
    return message.SerializeToString()  # the same field numbers in both requests


@pytest.mark.parametrize("rpc", ["unary", "stream"])
async def test_bad_synthesis_requests(setup, emulator, rpc):
    rt, channel, voice = setup
    md = auth(ALICE_KEY)

    raw = field(1, voice.voice_id.encode()) + field(2, b"caf\xc3 \xff\xfe")
    exc = await expect(grpc.StatusCode.INVALID_ARGUMENT, speak(channel, rpc, raw, md))
    assert "UTF-8" in exc.details() and field_violations(exc) == ["request"]

    for text in ["", " \t\n ", "\u200b\u200b"]:
        exc = await expect(
            grpc.StatusCode.INVALID_ARGUMENT, speak(channel, rpc, request(voice.voice_id, text), md)
        )
        assert field_violations(exc) == ["text"], repr(text)

    too_long = "a" * (MAX_CHARS + 1)
    exc = await expect(
        grpc.StatusCode.INVALID_ARGUMENT, speak(channel, rpc, request(voice.voice_id, too_long), md)
    )
    assert field_violations(exc) == ["text"] and str(MAX_CHARS) in exc.details()

    bad_formats = {
        "format.encoding": common_pb2.AudioFormat(encoding=99),
        "format.sample_rate_hz": common_pb2.AudioFormat(sample_rate_hz=7999),
    }
    for name, fmt in bad_formats.items():
        exc = await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            speak(channel, rpc, request(voice.voice_id, "Hello.", fmt), md),
        )
        assert field_violations(exc) == [name]
    exc = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        speak(
            channel,
            rpc,
            request(voice.voice_id, "Hi.", common_pb2.AudioFormat(sample_rate_hz=48001)),
            md,
        ),
    )
    assert field_violations(exc) == ["format.sample_rate_hz"]

    exc = await expect(
        grpc.StatusCode.INVALID_ARGUMENT, speak(channel, rpc, request("../../etc", "Hi."), md)
    )
    assert field_violations(exc) == ["voice_id"]
    await expect(grpc.StatusCode.NOT_FOUND, speak(channel, rpc, request(UNKNOWN_VOICE, "Hi."), md))
    # Bob may not know Alice's voice exists.
    await expect(
        grpc.StatusCode.NOT_FOUND,
        speak(channel, rpc, request(voice.voice_id, "Hi."), auth(BOB_KEY)),
    )
    await expect(
        grpc.StatusCode.UNAUTHENTICATED, speak(channel, rpc, request(voice.voice_id, "Hi."), ())
    )

    assert emulator.state.request_count(ELEVENLABS, Op.TTS_STREAM) == 0
    assert emulator.state.request_count(ELEVENLABS, Op.TTS) == 0
    assert await stored_audio(rt) == []

    # The limit is the limit: exactly MAX_CHARS characters is spoken.
    words = ("word " * MAX_CHARS)[: MAX_CHARS - 1] + "."
    assert len(words) == MAX_CHARS
    result = await speak(channel, rpc, request(voice.voice_id, words), md)
    assert result
    assert emulator.state.request_count(ELEVENLABS, Op.TTS_STREAM) >= 1


async def test_bad_batch_jobs_store_nothing(setup, emulator):
    rt, channel, voice = setup
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    md = auth(ADMIN_KEY)
    create_path = "/voiceslot.v1.SynthesizerService/CreateBatchJob"
    create_raw = channel.unary_unary(
        create_path,
        request_serializer=lambda b: b,
        response_deserializer=spb.CreateBatchJobResponse.FromString,
    )

    def item(name: bytes, text: bytes) -> bytes:
        return field(2, field(1, name) + field(2, text))

    raw = field(1, voice.voice_id.encode()) + item(b"ok", b"fine") + item(b"bad", b"\xed\xa0\x80")
    exc = await expect(grpc.StatusCode.INVALID_ARGUMENT, create_raw(raw, metadata=md))
    assert "UTF-8" in exc.details()
    raw = field(1, voice.voice_id.encode()) + item(b"n\xff", b"fine")
    await expect(grpc.StatusCode.INVALID_ARGUMENT, create_raw(raw, metadata=md))

    async def create(items, voice_id=voice.voice_id):
        return await synth.CreateBatchJob(
            spb.CreateBatchJobRequest(voice_id=voice_id, items=items), metadata=md
        )

    ok = spb.BatchItemInput(name="ok", text="Fine.")
    exc = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        create([ok, spb.BatchItemInput(name="long", text="a" * (MAX_CHARS + 1))]),
    )
    assert field_violations(exc) == ["items[1].text"]
    exc = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        create([spb.BatchItemInput(name=f"n{i}", text="Hi.") for i in range(MAX_ITEMS + 1)]),
    )
    assert field_violations(exc) == ["items"]
    for hostile in ["..", "a\\b", "ｆｕｌｌ", "zero\u200bwidth", "%2e%2e%2f", "C:", "a b", "-\n-"]:
        exc = await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            create([ok, spb.BatchItemInput(name=hostile, text="Hi.")]),
        )
        assert field_violations(exc) == ["items[1].name"], repr(hostile)
    exc = await expect(grpc.StatusCode.INVALID_ARGUMENT, create([ok], voice_id="v_/../x"))
    assert field_violations(exc) == ["voice_id"]
    await expect(grpc.StatusCode.NOT_FOUND, create([ok], voice_id=UNKNOWN_VOICE))

    exc = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        synth.GetBatchJob(spb.GetBatchJobRequest(job_id="../job"), metadata=md),
    )
    assert field_violations(exc) == ["job_id"]
    await expect(
        grpc.StatusCode.NOT_FOUND,
        synth.GetBatchJob(spb.GetBatchJobRequest(job_id="job_" + "0" * 32), metadata=md),
    )

    assert list((await synth.ListBatchJobs(spb.ListBatchJobsRequest(), metadata=md)).jobs) == []
    assert emulator.state.request_count(ELEVENLABS, Op.TTS_STREAM) == 0
    assert await stored_audio(rt) == []


async def test_odd_but_valid_item_names_never_reach_storage_paths(setup):
    rt, channel, voice = setup
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    md = auth(ADMIN_KEY)
    names = ["-rf", "CON", "a..b", "x" * 128, "_"]
    job = (
        await synth.CreateBatchJob(
            spb.CreateBatchJobRequest(
                voice_id=voice.voice_id,
                items=[spb.BatchItemInput(name=n, text=f"Item {i}.") for i, n in enumerate(names)],
            ),
            metadata=md,
        )
    ).job
    final = [
        u.job
        async for u in synth.WatchBatchJob(spb.WatchBatchJobRequest(job_id=job.job_id), metadata=md)
    ][-1]
    assert (final.succeeded_items, final.failed_items) == (len(names), 0)
    items = (
        await synth.GetBatchJob(
            spb.GetBatchJobRequest(job_id=job.job_id, include_items=True), metadata=md
        )
    ).items
    assert [i.name for i in items] == names
    keys = await stored_audio(rt)
    assert sorted(keys) == sorted(f"audio/{job.job_id}/{i.item_id}.wav" for i in items)
    assert all(re.fullmatch(r"audio/job_[0-9a-f]{32}/it_[0-9a-f]{32}\.wav", k) for k in keys)
    exc = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        synth.DownloadBatchItemAudio(
            spb.DownloadBatchItemAudioRequest(job_id=job.job_id, item_id="../../" + names[0]),
            metadata=md,
        ).read(),
    )
    assert field_violations(exc) == ["item_id"]
