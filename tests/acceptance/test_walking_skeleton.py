"""Register → ensure active → synthesize, end to end over real gRPC sockets, with the
local engine running a tiny XTTS built by the tests."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import soundfile as sf

from tests.conftest import ALICE_KEY, auth
from tests.support import ensure_ready, register
from voiceslot.v1 import common_pb2, synthesizer_pb2_grpc
from voiceslot.v1 import synthesizer_pb2 as spb

XTTS_RATE = 24000
WAV = common_pb2.AudioFormat(encoding=common_pb2.AUDIO_ENCODING_WAV)


def decode(data: bytes) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(io.BytesIO(data), dtype="float32")
    return audio, rate


async def test_voice_registered_cloned_and_spoken(channel, sample_wav):
    md = auth(ALICE_KEY)
    voice = await register(channel, md, sample_wav, name="Alice")
    assert voice.state == common_pb2.VOICE_STATE_REGISTERED
    assert voice.owner == "alice"

    ready = await ensure_ready(channel, md, voice.voice_id)
    assert ready.ready.provider_voice_id
    assert ready.ready.lease.lease_id
    assert ready.voice.state == common_pb2.VOICE_STATE_READY

    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    response = await synth.Synthesize(
        spb.SynthesizeRequest(
            voice_id=voice.voice_id, text="Hello there. How are you?", format=WAV, seed=7
        ),
        metadata=md,
    )
    audio, rate = decode(response.audio)
    assert rate == XTTS_RATE == response.format.sample_rate_hz
    assert audio.size > 0.1 * XTTS_RATE
    assert float(np.sqrt(np.mean(audio**2))) > 1e-3, "audio is silent"
    assert abs(response.audio_duration.ToNanoseconds() / 1e9 - audio.size / rate) < 0.01


async def test_stream_matches_unary_for_the_same_seed(channel, sample_wav):
    md = auth(ALICE_KEY)
    voice = await register(channel, md, sample_wav)
    await ensure_ready(channel, md, voice.voice_id)
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    text = "First sentence here. And a second one."

    chunks = [
        c
        async for c in synth.SynthesizeStream(
            spb.SynthesizeStreamRequest(voice_id=voice.voice_id, text=text, format=WAV, seed=11),
            metadata=md,
        )
    ]
    assert [c.sequence for c in chunks] == list(range(len(chunks)))
    assert chunks[0].format.sample_rate_hz == XTTS_RATE
    assert {c.sentence_index for c in chunks} == {0, 1}
    streamed, rate = decode(b"".join(c.audio_chunk for c in chunks))

    unary = await synth.Synthesize(
        spb.SynthesizeRequest(voice_id=voice.voice_id, text=text, format=WAV, seed=11), metadata=md
    )
    whole, whole_rate = decode(unary.audio)
    assert rate == whole_rate == XTTS_RATE
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, atol=1e-4)


@pytest.mark.postgres
async def test_the_same_on_postgresql(make_settings, postgres_url, sample_wav):
    from voiceslot.cli.runtime import Runtime

    runtime = await Runtime(make_settings(database_url=postgres_url)).start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
            md = auth(ALICE_KEY)
            voice = await register(channel, md, sample_wav)
            await ensure_ready(channel, md, voice.voice_id)
            synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
            response = await synth.Synthesize(
                spb.SynthesizeRequest(
                    voice_id=voice.voice_id, text="Stored in PostgreSQL.", format=WAV
                ),
                metadata=md,
            )
            audio, rate = decode(response.audio)
            assert rate == XTTS_RATE and float(np.abs(audio).max()) > 1e-3
    finally:
        await runtime.stop()
