"""The emulator speaks the providers' published contracts: its JSON answers validate
against the OpenAPI schemas (``$ref``s resolved), its audio is valid in the format asked
for, and what our adapters send validates against the request schemas."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import httpx
import jsonschema
import pytest
import soundfile as sf

from voiceslot.providers.base import CloneRequest, Provider, SynthesisRequest
from voiceslot.testing.emulator import (
    CARTESIA,
    DEFAULT_CARTESIA_KEY,
    DEFAULT_ELEVENLABS_KEY,
    ELEVENLABS,
    Op,
    ProviderEmulator,
)

if TYPE_CHECKING:
    from tests.integration.providers.conftest import OpenApi

Sample = Callable[[int], bytes]


@pytest.fixture
async def el_raw(emu: ProviderEmulator) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"xi-api-key": DEFAULT_ELEVENLABS_KEY}
    async with httpx.AsyncClient(base_url=emu.elevenlabs_url, headers=headers) as client:
        yield client


@pytest.fixture
async def ca_raw(emu: ProviderEmulator) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {DEFAULT_CARTESIA_KEY}", "Cartesia-Version": "2025-04-16"}
    async with httpx.AsyncClient(base_url=emu.cartesia_url, headers=headers) as client:
        yield client


def decode(data: bytes) -> tuple[int, int]:
    """(sample rate, frames) of an audio file."""
    info = sf.info(io.BytesIO(data))
    return info.samplerate, info.frames


def test_the_validator_rejects_what_the_schemas_forbid(openapi: OpenApi) -> None:
    """Guards against a vacuous validator (e.g. unresolved refs accepting anything)."""
    with pytest.raises(jsonschema.ValidationError):
        openapi.validate("elevenlabs", "GetVoicesV2ResponseModel", {"voices": [{"voice_id": 1}]})
    with pytest.raises(jsonschema.ValidationError):
        openapi.validate("cartesia", "GetVoicesResponse", {"data": [{"id": "x"}], "has_more": 0})
    with pytest.raises(jsonschema.ValidationError):
        openapi.validate("cartesia", "TTSSSEEvent", {"type": "chunk", "done": True, "data": "AA=="})
    openapi.validate("cartesia", "ErrorMessage", {"message": "m", "request_id": None})  # nullable


# -- ElevenLabs --------------------------------------------------------------------------


async def test_elevenlabs_voice_answers_validate(
    el_raw: httpx.AsyncClient, emu: ProviderEmulator, openapi: OpenApi, sample: Sample
) -> None:
    added = await el_raw.post(
        "/v1/voices/add",
        data={"name": "vs-schema-g1", "labels": json.dumps({"voiceslot_label": "vs-schema-g1"})},
        files=[("files", ("s.wav", sample(1), "audio/wav"))],
    )
    assert added.status_code == 200 and added.headers["request-id"]
    openapi.validate("elevenlabs", "AddVoiceIVCResponseModel", added.json())
    voice_id = added.json()["voice_id"]

    emu.state.set_page_size_cap(1)
    first = await el_raw.get("/v2/voices", params={"page_size": 100})
    openapi.validate("elevenlabs", "GetVoicesV2ResponseModel", first.json())
    assert first.json()["has_more"] and first.json()["next_page_token"]
    second = await el_raw.get(
        "/v2/voices", params={"page_size": 100, "next_page_token": first.json()["next_page_token"]}
    )
    openapi.validate("elevenlabs", "GetVoicesV2ResponseModel", second.json())
    assert first.json()["voices"][0]["voice_id"] != second.json()["voices"][0]["voice_id"]

    everything = await el_raw.get("/v1/voices")
    openapi.validate("elevenlabs", "GetVoicesResponseModel", everything.json())
    assert {v["category"] for v in everything.json()["voices"]} == {"premade", "cloned"}

    one = await el_raw.get(f"/v1/voices/{voice_id}")
    openapi.validate("elevenlabs", "VoiceResponseModel", one.json())

    deleted = await el_raw.delete(f"/v1/voices/{voice_id}")
    openapi.validate("elevenlabs", "DeleteVoiceResponseModel", deleted.json())
    assert deleted.json() == {"status": "ok"}


@pytest.mark.parametrize("max_edits", [None, 25])
async def test_elevenlabs_subscription_validates(
    el_raw: httpx.AsyncClient, emu: ProviderEmulator, openapi: OpenApi, max_edits: int | None
) -> None:
    emu.state.configure_account(ELEVENLABS, DEFAULT_ELEVENLABS_KEY, max_voice_add_edits=max_edits)

    body = (await el_raw.get("/v1/user/subscription")).json()

    openapi.validate("elevenlabs", "ExtendedSubscriptionResponseModel", body)
    assert body["max_voice_add_edits"] == max_edits and body["voice_limit"] == 30


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "/v1/voices/add", {"data": {"description": "no name, no files"}}),
        ("GET", "/v2/voices", {"params": {"page_size": 101}}),
        (
            "POST",
            "/v1/text-to-speech/any",
            {"params": {"output_format": "flac_1"}, "json": {"text": "x"}},
        ),
        ("POST", "/v1/text-to-speech/any", {"json": {"no_text": True}}),
    ],
)
async def test_elevenlabs_422_is_fastapi_shaped(
    el_raw: httpx.AsyncClient, openapi: OpenApi, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    response = await el_raw.request(method, path, **kwargs)

    assert response.status_code == 422
    openapi.validate("elevenlabs", "HTTPValidationError", response.json())
    assert response.json()["detail"]


@pytest.mark.parametrize(
    ("output_format", "rate"),
    [("mp3_44100_128", 44100), ("mp3_22050_32", 22050), ("opus_48000_64", 48000)],
)
async def test_elevenlabs_encoded_audio_is_valid(
    el_raw: httpx.AsyncClient, emu: ProviderEmulator, sample: Sample, output_format: str, rate: int
) -> None:
    premade = emu.state.list_voices(
        emu.state.account(ELEVENLABS, DEFAULT_ELEVENLABS_KEY), page_size=1, premade_only=True
    ).voices[0]

    response = await el_raw.post(
        f"/v1/text-to-speech/{premade.voice_id}",
        params={"output_format": output_format},
        json={"text": "Encoded audio."},
    )

    assert response.status_code == 200
    decoded_rate, frames = decode(response.content)
    assert decoded_rate == rate and frames > rate * 0.2


async def test_elevenlabs_adapter_requests_validate(
    eleven: Provider, emu: ProviderEmulator, openapi: OpenApi, sample: Sample
) -> None:
    voice = await eleven.clone(CloneRequest(label="vs-req-g1", sample=sample(1), description="d"))
    await eleven.find_by_label("vs-req-g1")
    _ = [v async for v in eleven.list_voices()]
    request = SynthesisRequest(provider_voice_id=voice.provider_voice_id, text="Hi.", seed=7)
    await eleven.synthesize(request)
    _ = [c async for c in eleven.synthesize_stream(request)]

    clone_op = openapi.operation("elevenlabs", "/v1/voices/add", "post")
    clone_schema = openapi.documents["elevenlabs"]["components"]["schemas"][
        "Body_Add_voice_v1_voices_add_post"
    ]
    [clone_request] = emu.state.requests(ELEVENLABS, Op.CLONE)
    assert set(clone_request.form) | {"files"} <= set(clone_schema["properties"])
    assert set(clone_schema["required"]) <= set(clone_request.form) | {"files"}
    assert "multipart/form-data" in clone_op["requestBody"]["content"]

    list_params = {
        p["name"] for p in openapi.operation("elevenlabs", "/v2/voices", "get")["parameters"]
    }
    for listed in emu.state.requests(ELEVENLABS, Op.LIST):
        assert set(listed.query) <= list_params

    tts_op = openapi.operation("elevenlabs", "/v1/text-to-speech/{voice_id}", "post")
    [output_format] = [p for p in tts_op["parameters"] if p["name"] == "output_format"]
    [unary] = emu.state.requests(ELEVENLABS, Op.TTS)
    [stream] = emu.state.requests(ELEVENLABS, Op.TTS_STREAM)
    openapi.validate(
        "elevenlabs", "Body_Text_to_speech_v1_text_to_speech__voice_id__post", unary.json
    )
    openapi.validate(
        "elevenlabs",
        "Body_Text_to_speech_streaming_v1_text_to_speech__voice_id__stream_post",
        stream.json,
    )
    for sent in (unary, stream):
        jsonschema.validate(sent.query["output_format"], output_format["schema"])
        assert sent.json["seed"] == 7


# -- Cartesia ----------------------------------------------------------------------------


async def test_cartesia_voice_answers_validate(
    ca_raw: httpx.AsyncClient, emu: ProviderEmulator, openapi: OpenApi, sample: Sample
) -> None:
    cloned = await ca_raw.post(
        "/voices/clone",
        data={"name": "vs-schema-g1", "language": "de", "description": "x"},
        files={"clip": ("c.wav", sample(1), "audio/wav")},
    )
    assert cloned.status_code == 200
    openapi.validate("cartesia", "VoiceMetadata", cloned.json())
    voice_id = cloned.json()["id"]

    emu.state.set_page_size_cap(1)
    first = await ca_raw.get("/voices", params={"limit": 100})
    openapi.validate("cartesia", "GetVoicesResponse", first.json())
    assert first.json()["has_more"] and first.json()["next_page"]
    second = await ca_raw.get(
        "/voices", params={"limit": 100, "starting_after": first.json()["next_page"]}
    )
    openapi.validate("cartesia", "GetVoicesResponse", second.json())

    one = await ca_raw.get(f"/voices/{voice_id}")
    openapi.validate("cartesia", "Voice", one.json())
    assert one.json()["is_owner"] and one.json()["locales"][0]["locale"] == "de-DE"

    deleted = await ca_raw.delete(f"/voices/{voice_id}")
    assert deleted.status_code == 204 and deleted.content == b""
    missing = await ca_raw.delete(f"/voices/{voice_id}")
    assert missing.status_code == 404
    openapi.validate("cartesia", "ErrorMessage", missing.json())


async def test_cartesia_errors_are_json_or_plain_text(emu: ProviderEmulator) -> None:
    async with httpx.AsyncClient(base_url=emu.cartesia_url) as raw:
        no_key = await raw.get("/voices", headers={"Cartesia-Version": "2025-04-16"})
        no_version = await raw.get(
            "/voices", headers={"Authorization": f"Bearer {DEFAULT_CARTESIA_KEY}"}
        )

    assert no_key.status_code == 401 and no_key.headers["content-type"].startswith("text/plain")
    assert no_version.status_code == 400 and "Cartesia-Version" in no_version.json()["message"]


async def test_cartesia_sse_events_validate(
    ca_raw: httpx.AsyncClient, emu: ProviderEmulator, openapi: OpenApi
) -> None:
    account = emu.state.account(CARTESIA, DEFAULT_CARTESIA_KEY)
    public = emu.state.list_voices(account, page_size=1).voices[0]
    body = {
        "model_id": "sonic-3",
        "transcript": "Events.",
        "voice": {"mode": "id", "id": public.voice_id},
        "output_format": {"container": "raw", "encoding": "pcm_f32le", "sample_rate": 16000},
    }

    async with ca_raw.stream("POST", "/tts/sse", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [
            json.loads(line[5:])
            async for line in response.aiter_lines()
            if line.startswith("data:")
        ]

    for event in events:
        openapi.validate("cartesia", "TTSSSEEvent", event)
    assert [e["type"] for e in events][-1] == "done"
    audio = b"".join(base64.b64decode(e["data"]) for e in events if e["type"] == "chunk")
    assert len(audio) % 4 == 0 and len(audio) // 4 > 16000 * 0.2  # float32 samples


@pytest.mark.parametrize(
    ("output_format", "rate"),
    [
        ({"container": "wav", "encoding": "pcm_s16le", "sample_rate": 22050}, 22050),
        ({"container": "wav", "encoding": "pcm_mulaw", "sample_rate": 8000}, 8000),
        ({"container": "mp3", "bit_rate": 128000, "sample_rate": 44100}, 44100),
    ],
)
async def test_cartesia_encoded_audio_is_valid(
    ca_raw: httpx.AsyncClient, emu: ProviderEmulator, output_format: dict[str, Any], rate: int
) -> None:
    public = emu.state.list_voices(
        emu.state.account(CARTESIA, DEFAULT_CARTESIA_KEY), page_size=1
    ).voices[0]
    body = {
        "model_id": "sonic-3",
        "transcript": "Containers.",
        "voice": {"mode": "id", "id": public.voice_id},
        "output_format": output_format,
    }

    response = await ca_raw.post("/tts/bytes", json=body)

    assert response.status_code == 200
    decoded_rate, frames = decode(response.content)
    assert decoded_rate == rate and frames > rate * 0.2


async def test_cartesia_adapter_requests_validate(
    cartesia: Provider, emu: ProviderEmulator, openapi: OpenApi, sample: Sample
) -> None:
    voice = await cartesia.clone(CloneRequest(label="vs-req-g1", sample=sample(1)))
    await cartesia.find_by_label("vs-req-g1")
    request = SynthesisRequest(provider_voice_id=voice.provider_voice_id, text="Hi.")
    await cartesia.synthesize(request)
    _ = [c async for c in cartesia.synthesize_stream(request)]

    clone_schema = openapi.operation("cartesia", "/voices/clone", "post")["requestBody"]["content"][
        "multipart/form-data"
    ]["schema"]
    [clone_request] = emu.state.requests(CARTESIA, Op.CLONE)
    assert set(clone_request.form) | {"clip"} <= set(clone_schema["properties"])
    assert set(clone_schema["required"]) <= set(clone_request.form) | {"clip"}

    list_params = {
        p.get("name") for p in openapi.operation("cartesia", "/voices", "get")["parameters"]
    }
    for listed in emu.state.requests(CARTESIA, Op.LIST):
        assert set(listed.query) <= list_params

    [unary] = emu.state.requests(CARTESIA, Op.TTS)
    [stream] = emu.state.requests(CARTESIA, Op.TTS_STREAM)
    openapi.validate("cartesia", "TTSRequest", unary.json)
    openapi.validate("cartesia", "TTSSSERequest", stream.json)
