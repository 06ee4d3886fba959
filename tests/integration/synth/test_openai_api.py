"""The OpenAI-compatible HTTP API, driven by the official ``openai`` client over a real
socket against both services in this process (``voiceslot serve``'s runtime) speaking
through the ElevenLabs emulator: audio in every offered format and its streaming form,
the same keys, ownership and rate limits as gRPC, and errors in OpenAI's shape."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from tests.conftest import ALICE_KEY, BOB_KEY, TEST_KEYS, auth
from voiceslot.config import AuthConfig, HttpApiConfig, SynthConfig
from voiceslot.testing.emulator import ELEVENLABS, Op

from .conftest import active_leases, ready_voice
from .support import eventually

MAX_CHARS = 400
TEXT = "Hello from voiceslot. This is the second sentence."
UNKNOWN_VOICE = "v_" + "0" * 32
DECODED = {"mp3", "opus", "wav", "flac"}
"""Formats with a container soundfile reads; ``pcm`` is raw samples."""


@pytest.fixture
async def api(start_runtime, open_channel, sample_wav):
    """(runtime, Alice's READY voice id, a client as Alice)."""
    rt = await start_runtime(
        synth=SynthConfig(max_text_chars=MAX_CHARS, http=HttpApiConfig(enabled=True, port=0))
    )
    channel = open_channel(rt)
    voice = await ready_voice(channel, auth(ALICE_KEY), sample_wav)
    client = client_for(rt, ALICE_KEY)
    yield rt, channel, voice.voice_id, client
    await client.close()


def client_for(rt, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{rt.http_port}/v1", api_key=key, max_retries=0, timeout=60
    )


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """Samples and rate of ``data`` as ``fmt``; fails the test when it does not decode."""
    if fmt == "pcm":
        assert len(data) % 2 == 0
        return np.frombuffer(data, dtype="<i2"), 24000
    samples, rate = sf.read(io.BytesIO(data), dtype="int16")
    return samples, rate


@pytest.mark.parametrize("fmt", ["mp3", "opus", "wav", "flac", "pcm"])
async def test_every_format_decodes_whole_and_streamed(api, emulator, fmt: str) -> None:
    rt, channel, voice, client = api
    whole = await client.audio.speech.create(
        model="tts-1", voice=voice, input=TEXT, response_format=fmt
    )
    data = whole.content
    samples, rate = decode(data, fmt)
    assert rate == 24000
    # The emulator speaks 45 ms a character: the whole text, not a cut of it.
    assert len(samples) / rate > 0.8 * 0.045 * len(TEXT)

    async with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice=voice, input=TEXT, response_format=fmt
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(
            {"mp3": "audio/mpeg", "opus": "audio/ogg", "wav": "audio/wav"}.get(fmt, f"audio/{fmt}")
        )
        pieces = [piece async for piece in response.iter_bytes()]
    streamed = b"".join(pieces)
    streamed_samples, _ = decode(streamed, fmt)
    assert abs(len(streamed_samples) - len(samples)) <= 0.05 * len(samples)
    await eventually(lambda: _no_leases(channel, voice), what="leases released", timeout=30)


async def test_the_body_streams_in_pieces_as_sentences_are_made(api) -> None:
    rt, _, voice, client = api
    text = " ".join(f"Sentence number {i} is here." for i in range(6))
    async with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice=voice, input=text, response_format="pcm"
    ) as response:
        assert response.headers.get("transfer-encoding") == "chunked"
        pieces = [p async for p in response.iter_bytes(chunk_size=None)]
    assert len(pieces) > 1


async def test_a_wrong_key_is_401_in_openais_error_shape(api) -> None:
    rt, _, voice, _ = api
    stranger = client_for(rt, "not-a-key")
    try:
        with pytest.raises(openai.AuthenticationError) as caught:
            await stranger.audio.speech.create(model="tts-1", voice=voice, input=TEXT)
        assert caught.value.status_code == 401
        error = caught.value.response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            await stranger.models.list()
    finally:
        await stranger.close()
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"http://127.0.0.1:{rt.http_port}/v1/audio/speech", json={})
    assert answer.status_code == 401 and "error" in answer.json()


async def test_bad_input_is_400_naming_the_parameter(api, emulator) -> None:
    rt, _, voice, client = api
    before = emulator.state.request_count(ELEVENLABS, Op.TTS_STREAM)
    cases = [
        ({"input": "x" * (MAX_CHARS + 1)}, "input"),
        ({"input": "   "}, "input"),
        ({"response_format": "aac"}, "response_format"),
        ({"response_format": "ogg"}, "response_format"),
        ({"speed": 4.5}, "speed"),
        ({"speed": 2.0}, "speed"),  # inside OpenAI's range, outside ElevenLabs' 0.7..1.2
        ({"instructions": "Speak like a pirate."}, "instructions"),
        ({"voice": "alloy"}, "voice"),
    ]
    for change, param in cases:
        arguments = {"model": "tts-1", "voice": voice, "input": TEXT, **change}
        with pytest.raises(openai.BadRequestError) as caught:
            await client.audio.speech.create(**arguments)
        error = caught.value.response.json()["error"]
        assert caught.value.status_code == 400, error
        assert error["param"] == param, (change, error)
        assert error["type"] == "invalid_request_error"
        assert error["message"].startswith(f"{param}:"), error
    assert emulator.state.request_count(ELEVENLABS, Op.TTS_STREAM) == before


async def test_unknown_voice_other_users_voice_and_unknown_model_are_404(api) -> None:
    rt, _, voice, client = api
    bob = client_for(rt, BOB_KEY)
    try:
        for who, voice_id in ((client, UNKNOWN_VOICE), (bob, voice)):
            with pytest.raises(openai.NotFoundError) as caught:
                await who.audio.speech.create(model="tts-1", voice=voice_id, input=TEXT)
            assert caught.value.response.json()["error"]["param"] == "voice"
    finally:
        await bob.close()
    with pytest.raises(openai.NotFoundError) as caught:
        await client.audio.speech.create(model="tts-9", voice=voice, input=TEXT)
    assert caught.value.response.json()["error"]["code"] == "model_not_found"


async def test_speed_reaches_the_engine(api, emulator) -> None:
    rt, _, voice, client = api
    normal = await client.audio.speech.create(
        model="tts-1", voice=voice, input=TEXT, response_format="pcm", speed=1.0
    )
    assert "voice_settings" not in emulator.state.requests(ELEVENLABS, Op.TTS_STREAM)[-1].json
    fast = await client.audio.speech.create(
        model="tts-1", voice=voice, input=TEXT, response_format="pcm", speed=1.2
    )
    sent = emulator.state.requests(ELEVENLABS, Op.TTS_STREAM)[-1].json
    assert sent["voice_settings"] == {"speed": pytest.approx(1.2)}
    assert len(fast.content) < len(normal.content)


async def test_models_and_the_callers_voices_are_listed(api, sample_wav, open_channel) -> None:
    rt, channel, voice, client = api
    models = await client.models.list()
    assert {m.id for m in models.data} == {"voiceslot", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"}
    assert (await client.models.retrieve("tts-1")).id == "tts-1"
    bobs = await ready_voice(channel, auth(BOB_KEY), sample_wav)
    async with httpx.AsyncClient() as http:
        listed = await http.get(
            f"http://127.0.0.1:{rt.http_port}/v1/audio/voices",
            headers={"authorization": f"Bearer {ALICE_KEY}"},
        )
    assert listed.status_code == 200
    ids = [v["id"] for v in listed.json()["data"]]
    assert ids == [voice] and bobs.voice_id not in ids
    assert listed.json()["data"][0]["state"] in {"ready", "idle"}


async def test_an_oversized_body_is_413_and_an_unknown_path_404(api) -> None:
    rt, _, voice, _ = api
    base = f"http://127.0.0.1:{rt.http_port}"
    headers = {"authorization": f"Bearer {ALICE_KEY}"}
    big = {"model": "tts-1", "voice": voice, "input": "a" * (300 * 1024)}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
        answer = await http.post("/v1/audio/speech", json=big)
        assert answer.status_code == 413
        assert answer.json()["error"]["code"] == "request_too_large"
        answer = await http.post("/v1/audio/transcriptions", json={})
        assert answer.status_code == 404 and "error" in answer.json()
        answer = await http.post("/v1/audio/speech", content=b"{not json")
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_json"


async def test_the_rate_limit_is_grpcs_429_with_retry_after(start_runtime) -> None:
    rt = await start_runtime(
        synth=SynthConfig(http=HttpApiConfig(enabled=True, port=0)),
        auth=AuthConfig(api_keys=TEST_KEYS, rate_limit_per_second=0.01, rate_limit_burst=2),
    )
    client = client_for(rt, BOB_KEY)
    try:
        await client.models.list()
        await client.models.list()
        with pytest.raises(openai.RateLimitError) as caught:
            await client.models.list()
        assert caught.value.status_code == 429
        assert int(caught.value.response.headers["retry-after"]) >= 1
        assert caught.value.response.json()["error"]["code"] == "rate_limit_exceeded"
    finally:
        await client.close()


async def _no_leases(channel, voice_id: str) -> bool:
    return await active_leases(channel, voice_id) == 0


async def test_stopping_lets_a_response_in_flight_finish_and_refuses_new_ones(api, emulator):
    rt, channel, voice, client = api
    emulator.state.hold_streams()  # the provider sends one chunk, then waits for release
    base = f"http://127.0.0.1:{rt.http_port}"
    headers = {"authorization": f"Bearer {ALICE_KEY}"}
    body = {"model": "tts-1", "voice": voice, "input": TEXT, "response_format": "wav"}
    async with (
        httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http,
        http.stream("POST", "/v1/audio/speech", json=body) as response,
    ):
        assert response.status_code == 200
        pieces = response.aiter_bytes()
        received = [await anext(pieces)]
        stopping = asyncio.create_task(rt.stop())
        await eventually(lambda: _refused(base), what="new connections refused", timeout=30)
        assert not stopping.done()  # waiting for the response in flight
        emulator.state.release_streams()
        received += [piece async for piece in pieces]
    samples, rate = sf.read(io.BytesIO(b"".join(received)), dtype="int16")
    assert rate == 24000 and len(samples) / rate > 0.8 * 0.045 * len(TEXT)
    await asyncio.wait_for(stopping, 60)


async def _refused(base: str) -> bool:
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            await http.get("/v1/models")
    except httpx.ConnectError:
        return True
    except (httpx.ReadError, httpx.RemoteProtocolError):
        # Accepted just before the listener closed and dropped unanswered: not refused
        # yet; the next probe finds the port closed.
        return False
    return False
