"""Word timings on the ordinary streaming path (``synthesize_stream`` with
``options.word_timings``): each adapter against the emulator's timestamp endpoints over
real HTTP (ElevenLabs ``/stream/with-timestamps``, Cartesia ``/tts/sse`` with
``add_timestamps``), and those endpoints against the providers' OpenAPI files."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import pytest

from voiceslot.providers.base import (
    CloneRequest,
    PcmAudio,
    Provider,
    SpeechOptions,
    SynthesisRequest,
)
from voiceslot.testing.emulator import (
    CARTESIA,
    DEFAULT_CARTESIA_KEY,
    DEFAULT_ELEVENLABS_KEY,
    ELEVENLABS,
    Op,
    ProviderEmulator,
)
from voiceslot.testing.emulator.audio import speech_seconds

if TYPE_CHECKING:
    from tests.integration.providers.conftest import OpenApi

KINDS = ["elevenlabs", "cartesia"]
TEXT = "Timings come with the audio, word by word, for every engine that aligns."
TIMED = SpeechOptions(word_timings=True)


async def speak(
    provider: Provider, sample: Callable[[int], bytes], *, options: SpeechOptions
) -> list[PcmAudio]:
    voice = await provider.clone(CloneRequest(label="vs-words-g1", sample=sample(5)))
    request = SynthesisRequest(voice.provider_voice_id, TEXT, sample_rate_hz=16000, options=options)
    return [piece async for piece in provider.synthesize_stream(request)]


@pytest.mark.parametrize("kind", KINDS)
async def test_words_are_timed_within_the_audio(
    kind: str, make_provider: Callable[..., Provider], sample: Callable[[int], bytes]
) -> None:
    pieces = await speak(make_provider(kind), sample, options=TIMED)

    total = sum(piece.duration_s for piece in pieces)
    assert total == pytest.approx(speech_seconds(TEXT), abs=1e-3)
    words = [word for piece in pieces for word in piece.words]
    assert [w.word for w in words] == TEXT.split()
    assert words[0].start_s == pytest.approx(0.0, abs=1e-3)
    assert all(w.start_s < w.end_s for w in words)
    assert all(a.end_s <= b.start_s + 1e-3 for a, b in zip(words, words[1:], strict=False))
    assert words[-1].end_s <= total + 1e-3
    # A word travels with (or after) the audio it starts in, never before it.
    heard = 0.0
    for piece in pieces:
        heard += piece.duration_s
        assert all(w.start_s <= heard + 1e-3 for w in piece.words)


@pytest.mark.parametrize("kind", KINDS)
async def test_without_the_option_no_timings_are_asked_for(
    kind: str,
    make_provider: Callable[..., Provider],
    emu: ProviderEmulator,
    sample: Callable[[int], bytes],
) -> None:
    pieces = await speak(make_provider(kind), sample, options=SpeechOptions())

    assert all(piece.words == () for piece in pieces)
    [sent] = emu.state.requests(kind, Op.TTS_STREAM)  # type: ignore[arg-type]
    if kind == ELEVENLABS:
        assert not sent.path.endswith("/with-timestamps")
    else:
        assert "add_timestamps" not in (sent.json or {})


async def test_elevenlabs_timestamp_lines_and_request_validate(
    make_provider: Callable[..., Provider],
    emu: ProviderEmulator,
    openapi: OpenApi,
    sample: Callable[[int], bytes],
) -> None:
    provider = make_provider("elevenlabs")
    await speak(provider, sample, options=TIMED)
    [sent] = emu.state.requests(ELEVENLABS, Op.TTS_STREAM)
    assert sent.path.endswith("/stream/with-timestamps")
    openapi.validate(
        "elevenlabs",
        "Body_Text_to_speech_streaming_with_timestamps_v1_text_to_speech__voice_id__stream_with_timestamps_post",
        sent.json,
    )

    headers = {"xi-api-key": DEFAULT_ELEVENLABS_KEY}
    voice_id = sent.path.split("/")[-3]
    async with (
        httpx.AsyncClient(base_url=emu.elevenlabs_url, headers=headers) as client,
        client.stream(
            "POST",
            f"/v1/text-to-speech/{voice_id}/stream/with-timestamps",
            params={"output_format": "pcm_16000"},
            json={"text": "Two words."},
        ) as response,
    ):
        assert response.status_code == 200
        lines = [json.loads(line) async for line in response.aiter_lines() if line.strip()]
    for line in lines:
        openapi.validate("elevenlabs", "StreamingAudioChunkWithTimestampsResponseModel", line)
    chars = [c for line in lines for c in line["alignment"]["characters"]]
    assert "".join(chars) == "Two words."
    audio = b"".join(base64.b64decode(line["audio_base64"]) for line in lines)
    assert len(audio) == 2 * round(speech_seconds("Two words.") * 16000)


async def test_cartesia_timestamp_events_and_request_validate(
    make_provider: Callable[..., Provider],
    emu: ProviderEmulator,
    openapi: OpenApi,
    sample: Callable[[int], bytes],
) -> None:
    provider = make_provider("cartesia")
    await speak(provider, sample, options=TIMED)
    [sent] = emu.state.requests(CARTESIA, Op.TTS_STREAM)
    assert sent.json is not None and sent.json["add_timestamps"] is True
    openapi.validate("cartesia", "TTSSSERequest", sent.json)

    headers = {"Authorization": f"Bearer {DEFAULT_CARTESIA_KEY}", "Cartesia-Version": "2025-04-16"}
    body = {**sent.json, "transcript": "Two words."}
    async with (
        httpx.AsyncClient(base_url=emu.cartesia_url, headers=headers) as client,
        client.stream("POST", "/tts/sse", json=body) as response,
    ):
        events = [
            json.loads(line[5:])
            async for line in response.aiter_lines()
            if line.startswith("data:")
        ]
    for event in events:
        openapi.validate("cartesia", "TTSSSEEvent", event)
    stamps = [e for e in events if e["type"] == "timestamps"]
    assert stamps
    for event in stamps:
        openapi.validate("cartesia", "TTSSSETimestampsEvent", event)
    assert [w for e in stamps for w in e["word_timestamps"]["words"]] == ["Two", "words."]
