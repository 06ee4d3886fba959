"""Every output encoding at several requested rates, over real gRPC, unary and streamed,
with the local engine (tiny XTTS at 24 kHz): the audio decodes (soundfile; PCM16 read as
raw samples) at the rate asked for, or for MP3 and Opus at the rate the README documents
for that request, and lasts as long as the engine's output within 5 %.

A streamed MP3 carries no Xing/LAME header (it cannot know its length up front), so it
decodes with the encoder's priming samples (~1105 samples) and up to a frame of padding:
the text is long enough that this stays inside the 5 %."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf

from tests.conftest import ALICE_KEY, TEST_KEYS, auth
from tests.support import ensure_ready, register
from voiceslot.cli.runtime import Runtime
from voiceslot.config import AllocatorConfig, AuthConfig, ProviderConfig, Settings
from voiceslot.v1 import common_pb2, synthesizer_pb2_grpc
from voiceslot.v1 import synthesizer_pb2 as spb

ENGINE_RATE = 24000
TEXT = (
    "Formats are checked here. Each one is decoded again. "
    "Rates and lengths must match. This is the last sentence."
)
SEED = 23
TOLERANCE = 0.05
# The rates MP3 and Opus can carry (README / voiceslot.audio): a request for another rate
# gets the lowest of these at or above it, else the highest.
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
CASES = [
    ("wav", 0, ENGINE_RATE),
    ("wav", 8000, 8000),
    ("pcm16", 22050, 22050),
    ("mp3", 8000, 8000),
    ("mp3", 44100, 44100),
    ("opus", 16000, 16000),
    ("opus", 22050, 24000),
    ("opus", 44100, 48000),
]


def documented_rate(encoding: str, requested: int) -> int:
    rates = {"mp3": MP3_RATES, "opus": OPUS_RATES}.get(encoding)
    asked = requested or ENGINE_RATE
    if rates is None:
        return asked
    return next((r for r in rates if r >= asked), rates[-1])


@pytest.mark.parametrize(("encoding", "requested", "expected"), CASES)
def test_the_cases_follow_the_documented_rates(encoding, requested, expected):
    assert documented_rate(encoding, requested) == expected


def decode(data: bytes, encoding: str, rate_hint: int) -> tuple[np.ndarray, int]:
    if encoding == "pcm16":
        assert len(data) % 2 == 0
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, rate_hint
    audio, rate = sf.read(io.BytesIO(data), dtype="float32")
    return audio, rate


@pytest.fixture(scope="module")
async def formats_channel(
    tmp_path_factory: pytest.TempPathFactory, tiny_xtts_dir: Path
) -> AsyncIterator[grpc.aio.Channel]:
    """One deployment for the module: each case is two calls, not a fresh clone."""
    root = tmp_path_factory.mktemp("formats")
    settings = Settings(
        data_dir=root / "data",
        listen="127.0.0.1:0",
        log_format="console",
        providers=(ProviderConfig(name="local", kind="local", model_dir=tiny_xtts_dir),),
        auth=AuthConfig(api_keys=TEST_KEYS),
        allocator=AllocatorConfig(maintenance_interval_s=None, dispatch_interval_s=0.1),
    )
    rt = await Runtime(settings).start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{rt.port}") as channel:
            yield channel
    finally:
        await rt.stop()


@pytest.fixture(scope="module")
async def voice_and_engine_seconds(formats_channel, sample_wav) -> tuple[str, float]:
    """A ready voice, and how long the engine's output for TEXT with SEED lasts."""
    md = auth(ALICE_KEY)
    voice = await register(formats_channel, md, sample_wav, name="formats")
    await ensure_ready(formats_channel, md, voice.voice_id)
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(formats_channel)
    reference = await synth.Synthesize(
        spb.SynthesizeRequest(voice_id=voice.voice_id, text=TEXT, seed=SEED), metadata=md
    )
    seconds = reference.audio_duration.ToNanoseconds() / 1e9
    audio, rate = decode(reference.audio, "wav", 0)
    assert rate == ENGINE_RATE and abs(audio.size / rate - seconds) < 1e-3
    assert seconds > 3.0, "too short to hold a streamed MP3's priming inside 5 %"
    return voice.voice_id, seconds


@pytest.mark.parametrize(("encoding", "requested", "expected"), CASES)
async def test_encoding_decodes_at_the_rate_and_length_asked_for(
    formats_channel, voice_and_engine_seconds, encoding, requested, expected
):
    voice_id, engine_seconds = voice_and_engine_seconds
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(formats_channel)
    md = auth(ALICE_KEY)
    wire = getattr(common_pb2, f"AUDIO_ENCODING_{encoding.upper()}")
    fmt = common_pb2.AudioFormat(encoding=wire, sample_rate_hz=requested)

    unary = await synth.Synthesize(
        spb.SynthesizeRequest(voice_id=voice_id, text=TEXT, format=fmt, seed=SEED), metadata=md
    )
    assert (unary.format.encoding, unary.format.sample_rate_hz) == (wire, expected)
    assert unary.audio_duration.ToNanoseconds() / 1e9 == pytest.approx(engine_seconds, abs=1e-3)
    audio, rate = decode(unary.audio, encoding, unary.format.sample_rate_hz)
    assert rate == expected
    assert audio.size / rate == pytest.approx(engine_seconds, rel=TOLERANCE)
    assert float(np.sqrt(np.mean(audio**2))) > 1e-3, "silent"

    chunks = [
        c
        async for c in synth.SynthesizeStream(
            spb.SynthesizeStreamRequest(voice_id=voice_id, text=TEXT, format=fmt, seed=SEED),
            metadata=md,
        )
    ]
    assert [c.sequence for c in chunks] == list(range(len(chunks)))
    assert (chunks[0].format.encoding, chunks[0].format.sample_rate_hz) == (wire, expected)
    streamed, stream_rate = decode(b"".join(c.audio_chunk for c in chunks), encoding, expected)
    assert stream_rate == expected
    assert streamed.size / stream_rate == pytest.approx(engine_seconds, rel=TOLERANCE)
    if encoding in ("wav", "pcm16"):  # lossless: the very same samples as the unary call
        np.testing.assert_array_equal(streamed, audio)
