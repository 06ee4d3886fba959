"""SynthesizeStream over real gRPC against the ElevenLabs emulator: chunks in order, the
first one out while later sentences are not produced yet, the same audio as the unary
call, and the voice's lease renewed while streaming and released however the stream
ends (completion, the client cancelling, the provider failing)."""

from __future__ import annotations

import io
import threading

import grpc
import numpy as np
import pytest
import soundfile as sf

from tests.conftest import ADMIN_KEY, ALICE_KEY, auth
from voiceslot.testing.emulator import ELEVENLABS, Fault, FaultKind, Op
from voiceslot.testing.emulator.state import DEFAULT_ELEVENLABS_KEY
from voiceslot.v1 import common_pb2, synthesizer_pb2_grpc
from voiceslot.v1 import synthesizer_pb2 as spb

from .conftest import active_leases, ready_voice
from .support import eventually

SENTENCES = [
    "The first sentence is spoken at once.",
    "A second one follows it.",
    "And the third one ends the paragraph.",
]
TEXT = " ".join(SENTENCES)
WAV = common_pb2.AudioFormat(encoding=common_pb2.AUDIO_ENCODING_WAV)


def decode(data: bytes) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(io.BytesIO(data), dtype="int16")
    return audio, rate


def tts_streams(emulator) -> int:
    return emulator.state.request_count(ELEVENLABS, Op.TTS_STREAM)


def provider_in_flight(emulator) -> int:
    return emulator.state.account(ELEVENLABS, DEFAULT_ELEVENLABS_KEY).in_flight


async def read_rest(call, *, into: list | None = None) -> list:
    """The messages left on a stream (``read`` style: tests mix it with a first read)."""
    messages = [] if into is None else into
    while (message := await call.read()) is not grpc.aio.EOF:
        messages.append(message)
    return messages


async def no_leases(channel, voice_id: str) -> bool:
    return await active_leases(channel, voice_id) == 0


def audio_pipe_threads() -> int:
    """Reader threads of open MP3/Opus stream encoders (``voiceslot.audio._PipeSink``)."""
    return sum(1 for t in threading.enumerate() if t.name == "audio-pipe")


async def test_first_chunk_leaves_before_later_sentences_exist_and_matches_unary(
    start_runtime, open_channel, emulator, sample_wav
):
    channel = open_channel(await start_runtime())
    md = auth(ALICE_KEY)
    voice = await ready_voice(channel, md, sample_wav)
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)

    # The provider sends the first sentence's first chunk, then holds everything else.
    emulator.state.hold_streams()
    call = synth.SynthesizeStream(
        spb.SynthesizeStreamRequest(voice_id=voice.voice_id, text=TEXT, format=WAV, seed=5),
        metadata=md,
    )
    first = await call.read()
    assert first.sequence == 0 and first.sentence_index == 0
    assert first.format.encoding == common_pb2.AUDIO_ENCODING_WAV
    assert first.format.sample_rate_hz == 24000
    assert first.audio_chunk[:4] == b"RIFF" and len(first.audio_chunk) > 44
    # While the caller holds audio, the first sentence is still being produced and the
    # later ones have not even been asked for.
    assert tts_streams(emulator) == 1
    assert provider_in_flight(emulator) == 1

    emulator.state.release_streams()
    chunks = [first, *await read_rest(call)]
    assert await call.code() == grpc.StatusCode.OK
    assert tts_streams(emulator) == len(SENTENCES)
    assert [c.sequence for c in chunks] == list(range(len(chunks)))
    indexes = [c.sentence_index for c in chunks]
    assert indexes == sorted(indexes) and set(indexes) == set(range(len(SENTENCES)))
    assert all(not c.HasField("format") for c in chunks[1:])

    streamed, rate = decode(b"".join(c.audio_chunk for c in chunks))
    unary = await synth.Synthesize(
        spb.SynthesizeRequest(voice_id=voice.voice_id, text=TEXT, format=WAV, seed=5),
        metadata=md,
    )
    whole, whole_rate = decode(unary.audio)
    assert rate == whole_rate == unary.format.sample_rate_hz == 24000
    np.testing.assert_array_equal(streamed, whole)
    assert abs(whole.size / rate - unary.audio_duration.ToNanoseconds() / 1e9) < 1e-3
    # Released as the stream ended: the caller had its last byte only after that.
    assert await active_leases(channel, voice.voice_id) == 0


async def test_lease_is_renewed_while_a_stream_is_held(
    start_runtime, open_channel, emulator, sample_wav, monkeypatch
):
    ttl = 1.5
    rt = await start_runtime(lease_ttl_s=ttl)
    channel = open_channel(rt)
    md = auth(ALICE_KEY)
    voice = await ready_voice(channel, md, sample_wav)
    client = rt.synth.client()
    renewals: list[str] = []
    renew = client.renew

    async def counting_renew(lease_id: str) -> None:
        await renew(lease_id)
        renewals.append(lease_id)

    monkeypatch.setattr(client, "renew", counting_renew)
    emulator.state.hold_streams()
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    call = synth.SynthesizeStream(
        spb.SynthesizeStreamRequest(voice_id=voice.voice_id, text=TEXT, format=WAV), metadata=md
    )
    await call.read()
    # Four renewals at a third of the TTL each: the lease has outlived its first TTL.
    await eventually(lambda: len(renewals) >= 4, timeout=3 * ttl * 4, what="4 renewals")
    assert len(set(renewals)) == 1
    assert await active_leases(channel, voice.voice_id) == 1

    emulator.state.release_streams()
    assert await read_rest(call)
    assert await call.code() == grpc.StatusCode.OK
    assert await active_leases(channel, voice.voice_id) == 0


@pytest.mark.parametrize("encoding", ["wav", "mp3", "opus"])
async def test_client_cancel_releases_lease_provider_and_encoder(
    start_runtime, open_channel, emulator, sample_wav, encoding
):
    # A 60 s lease: back to zero leases within the test means released, not expired.
    channel = open_channel(await start_runtime(lease_ttl_s=60))
    md = auth(ALICE_KEY)
    voice = await ready_voice(channel, md, sample_wav)
    pipes_before = audio_pipe_threads()
    emulator.state.hold_streams()
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    fmt = common_pb2.AudioFormat(
        encoding=getattr(common_pb2, f"AUDIO_ENCODING_{encoding.upper()}"), sample_rate_hz=16000
    )
    call = synth.SynthesizeStream(
        spb.SynthesizeStreamRequest(voice_id=voice.voice_id, text=TEXT, format=fmt), metadata=md
    )
    await call.read()
    assert await active_leases(channel, voice.voice_id) == 1
    call.cancel()

    await eventually(lambda: no_leases(channel, voice.voice_id), what="lease released")
    await eventually(lambda: provider_in_flight(emulator) == 0, what="provider stream closed")
    await eventually(lambda: audio_pipe_threads() <= pipes_before, what="encoder closed")
    assert tts_streams(emulator) == 1


@pytest.mark.parametrize("where", ["first chunk", "mid-sentence"])
async def test_provider_failure_ends_the_stream_unavailable_and_releases(
    start_runtime, open_channel, emulator, sample_wav, where
):
    channel = open_channel(await start_runtime(lease_ttl_s=60))
    md = auth(ALICE_KEY)
    voice = await ready_voice(channel, md, sample_wav)
    pipes_before = audio_pipe_threads()
    if where == "first chunk":
        emulator.state.faults.inject(Fault(FaultKind.SERVER_ERROR, op=Op.TTS_STREAM, status=503))
    else:  # the first sentence's first chunk arrives, then the connection drops
        emulator.state.faults.inject(Fault(FaultKind.STREAM_BREAK, op=Op.TTS_STREAM))
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    fmt = common_pb2.AudioFormat(encoding=common_pb2.AUDIO_ENCODING_OPUS)
    call = synth.SynthesizeStream(
        spb.SynthesizeStreamRequest(voice_id=voice.voice_id, text=TEXT, format=fmt), metadata=md
    )
    received: list[spb.SynthesizeStreamResponse] = []
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await read_rest(call, into=received)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value.details()
    assert (len(received) > 0) == (where == "mid-sentence")
    # The lease went before the error reached the caller.
    assert await active_leases(channel, voice.voice_id) == 0
    await eventually(lambda: audio_pipe_threads() <= pipes_before, what="encoder closed")
    await eventually(lambda: provider_in_flight(emulator) == 0, what="provider stream closed")


async def test_overlapping_calls_share_a_lease_per_caller_and_release_it_last(
    start_runtime, open_channel, emulator, sample_wav
):
    channel = open_channel(await start_runtime(lease_ttl_s=60))
    md = auth(ALICE_KEY)
    voice = await ready_voice(channel, md, sample_wav)
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    emulator.state.hold_streams()

    def stream(key: str):
        return synth.SynthesizeStream(
            spb.SynthesizeStreamRequest(voice_id=voice.voice_id, text=TEXT, format=WAV),
            metadata=auth(key),
        )

    first, second = stream(ALICE_KEY), stream(ALICE_KEY)
    await first.read(), await second.read()
    assert await active_leases(channel, voice.voice_id) == 1  # one caller, one lease
    admin = stream(ADMIN_KEY)
    await admin.read()
    assert await active_leases(channel, voice.voice_id) == 2  # another caller, its own

    first.cancel()
    await eventually(lambda: provider_in_flight(emulator) == 2, what="first stream gone")
    assert await active_leases(channel, voice.voice_id) == 2  # alice's second still on it
    emulator.state.release_streams()
    assert await read_rest(second) and await read_rest(admin)
    assert await active_leases(channel, voice.voice_id) == 0


@pytest.mark.parametrize(
    ("encoding", "subtype"),
    [(common_pb2.AUDIO_ENCODING_MULAW, "ULAW"), (common_pb2.AUDIO_ENCODING_ALAW, "ALAW")],
)
async def test_telephony_audio_is_g711_at_8khz_streamed_and_whole(
    start_runtime, open_channel, emulator, sample_wav, encoding, subtype
):
    """What SIP trunks and Twilio media streams carry: 8 kHz G.711, one byte a sample, no
    header; a stream's bytes are those of the whole answer."""
    channel = open_channel(await start_runtime())
    md = auth(ALICE_KEY)
    voice = await ready_voice(channel, md, sample_wav)
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    fmt = common_pb2.AudioFormat(encoding=encoding)

    call = synth.SynthesizeStream(
        spb.SynthesizeStreamRequest(voice_id=voice.voice_id, text=TEXT, format=fmt, seed=3),
        metadata=md,
    )
    chunks = await read_rest(call)
    unary = await synth.Synthesize(
        spb.SynthesizeRequest(voice_id=voice.voice_id, text=TEXT, format=fmt, seed=3),
        metadata=md,
    )

    assert chunks[0].format.encoding == encoding and chunks[0].format.sample_rate_hz == 8000
    assert unary.format.sample_rate_hz == 8000
    streamed = b"".join(c.audio_chunk for c in chunks)
    assert streamed == unary.audio
    seconds = unary.audio_duration.ToNanoseconds() / 1e9
    assert len(unary.audio) == pytest.approx(8000 * seconds, abs=2)
    samples, _ = sf.read(
        io.BytesIO(unary.audio), samplerate=8000, channels=1, format="RAW", subtype=subtype
    )
    assert np.abs(samples).max() > 0.01  # sound, not silence
