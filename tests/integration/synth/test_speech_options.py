"""Per-request speech options over real gRPC: what reaches each provider (asserted at the
emulator, over HTTP), that a speed is heard (shorter audio), and INVALID_ARGUMENT naming
the option for an option the voice's engine lacks or a value out of its range, with
nothing sent to the provider and the lease given back."""

from __future__ import annotations

import math

import grpc
import pytest

from tests.acceptance.test_errors_and_auth import expect, field_violations
from tests.conftest import ALICE_KEY, auth
from voiceslot.cli.runtime import Runtime
from voiceslot.config import AllocatorConfig, ProviderConfig
from voiceslot.testing.emulator import CARTESIA, ELEVENLABS, Op
from voiceslot.v1 import common_pb2, synthesizer_pb2_grpc
from voiceslot.v1 import synthesizer_pb2 as spb

from .conftest import active_leases, ready_voice
from .support import eventually

MD = auth(ALICE_KEY)
TEXT = "The quick brown fox jumps over the lazy dog."
PCM = common_pb2.AudioFormat(encoding=common_pb2.AUDIO_ENCODING_PCM16)


@pytest.fixture
async def deployment(make_settings, emulator, tiny_xtts_dir, sample_wav, open_channel):
    """Both services over three engines: emulated ElevenLabs and Cartesia, and the tiny
    local XTTS; one READY voice of Alice's on each."""
    settings = make_settings(
        providers=(
            emulator.provider_config("elevenlabs", name="eleven", capacity=4),
            emulator.provider_config("cartesia", name="cart", capacity=4),
            ProviderConfig(name="local", kind="local", model_dir=tiny_xtts_dir, capacity=4),
        ),
        default_provider="eleven",
        allocator=AllocatorConfig(maintenance_interval_s=None, dispatch_interval_s=0.1),
    )
    rt = await Runtime(settings).start()
    try:
        channel = open_channel(rt)
        voices = {
            name: await ready_voice(channel, MD, sample_wav, provider=name)
            for name in ("eleven", "cart", "local")
        }
        yield channel, voices
    finally:
        await rt.stop()


def stub(channel: grpc.aio.Channel) -> synthesizer_pb2_grpc.SynthesizerServiceStub:
    return synthesizer_pb2_grpc.SynthesizerServiceStub(channel)


async def stream_pcm(channel, voice_id: str, options: spb.SpeechOptions, **kw) -> bytes:
    call = stub(channel).SynthesizeStream(
        spb.SynthesizeStreamRequest(
            voice_id=voice_id, text=TEXT, format=PCM, options=options, **kw
        ),
        metadata=MD,
    )
    return b"".join([m.audio_chunk async for m in call])


async def test_elevenlabs_voice_settings_reach_the_provider_and_speed_is_heard(
    deployment, emulator
) -> None:
    channel, voices = deployment
    voice = voices["eleven"].voice_id
    settings = spb.ElevenLabsVoiceSettings(stability=0.0, style=0.25, use_speaker_boost=True)
    slow = await stream_pcm(channel, voice, spb.SpeechOptions(speed=0.8, elevenlabs=settings))
    sent = emulator.state.requests(ELEVENLABS, Op.TTS_STREAM)[-1].json
    assert sent["voice_settings"] == {
        "speed": pytest.approx(0.8),
        "stability": 0.0,
        "style": 0.25,
        "use_speaker_boost": True,
    }
    fast = await stream_pcm(channel, voice, spb.SpeechOptions(speed=1.2))
    assert emulator.state.requests(ELEVENLABS, Op.TTS_STREAM)[-1].json["voice_settings"] == {
        "speed": pytest.approx(1.2)
    }
    assert len(fast) < len(slow) * 0.8  # the emulator speaks 1.5x faster

    plain = await stub(channel).Synthesize(
        spb.SynthesizeRequest(voice_id=voice, text=TEXT, format=PCM), metadata=MD
    )
    assert plain.audio
    assert "voice_settings" not in emulator.state.requests(ELEVENLABS, Op.TTS_STREAM)[-1].json


async def test_cartesia_generation_config_reaches_the_provider(deployment, emulator) -> None:
    channel, voices = deployment
    options = spb.SpeechOptions(
        speed=1.4, cartesia=spb.CartesiaVoiceControls(volume=1.5, emotion="calm")
    )
    answer = await stub(channel).Synthesize(
        spb.SynthesizeRequest(
            voice_id=voices["cart"].voice_id, text=TEXT, format=PCM, options=options
        ),
        metadata=MD,
    )
    assert answer.audio
    sent = emulator.state.requests(CARTESIA, Op.TTS_STREAM)[-1].json
    assert sent["generation_config"] == {
        "speed": pytest.approx(1.4),
        "volume": 1.5,
        "emotion": "calm",
    }


async def test_local_engine_speed_shortens_the_audio(deployment) -> None:
    channel, voices = deployment
    voice = voices["local"].voice_id
    # Seeded: the same generated tokens, so only the speed differs between the two.
    normal = await stream_pcm(channel, voice, spb.SpeechOptions(), seed=7)
    fast = await stream_pcm(channel, voice, spb.SpeechOptions(speed=2.0), seed=7)
    assert 0 < len(fast) < len(normal) * 0.75


REFUSED = [
    (
        "eleven",
        spb.SpeechOptions(cartesia=spb.CartesiaVoiceControls(volume=1.0)),
        "options.cartesia.volume",
    ),
    (
        "eleven",
        spb.SpeechOptions(cartesia=spb.CartesiaVoiceControls(emotion="calm")),
        "options.cartesia.emotion",
    ),
    ("eleven", spb.SpeechOptions(speed=1.3), "options.speed"),
    (
        "eleven",
        spb.SpeechOptions(elevenlabs=spb.ElevenLabsVoiceSettings(stability=1.5)),
        "options.elevenlabs.stability",
    ),
    (
        "cart",
        spb.SpeechOptions(elevenlabs=spb.ElevenLabsVoiceSettings(use_speaker_boost=True)),
        "options.elevenlabs.use_speaker_boost",
    ),
    (
        "cart",
        spb.SpeechOptions(cartesia=spb.CartesiaVoiceControls(emotion="furious")),
        "options.cartesia.emotion",
    ),
    ("cart", spb.SpeechOptions(speed=0.5), "options.speed"),
    (
        "local",
        spb.SpeechOptions(elevenlabs=spb.ElevenLabsVoiceSettings(similarity_boost=0.5)),
        "options.elevenlabs.similarity_boost",
    ),
    ("local", spb.SpeechOptions(speed=2.5), "options.speed"),
    ("local", spb.SpeechOptions(speed=math.nan), "options.speed"),
    ("eleven", spb.SpeechOptions(speed=-math.inf), "options.speed"),
]
"""(voice's engine, options, the field the error must name)"""


async def test_options_the_engine_lacks_are_invalid_argument_naming_them(
    deployment, emulator
) -> None:
    channel, voices = deployment
    for engine, options, field in REFUSED:
        voice = voices[engine].voice_id
        for rpc in ("unary", "stream"):
            before = emulator.state.request_count(op=Op.TTS_STREAM)
            if rpc == "unary":
                call = stub(channel).Synthesize(
                    spb.SynthesizeRequest(voice_id=voice, text=TEXT, format=PCM, options=options),
                    metadata=MD,
                )
            else:
                call = stream_pcm(channel, voice, options)
            error = await expect(grpc.StatusCode.INVALID_ARGUMENT, call)
            assert field_violations(error) == [field], (engine, rpc, error.details())
            assert field in (error.details() or "")
            assert emulator.state.request_count(op=Op.TTS_STREAM) == before  # nothing sent
            await eventually(
                lambda v=voice: _no_leases(channel, v), what="the lease released", timeout=30.0
            )


async def _no_leases(channel: grpc.aio.Channel, voice_id: str) -> bool:
    return await active_leases(channel, voice_id) == 0
