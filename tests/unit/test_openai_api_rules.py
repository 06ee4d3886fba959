"""The OpenAI-compatible API's pure rules: the speech body's checks and the error shape
over the shared domain → status mapping."""

from __future__ import annotations

import pytest

from synth_svc.openai_api.errors import ApiError, body, from_exception
from synth_svc.openai_api.speech import FORMATS, MODELS, parse_speech
from voiceslot import errors
from voiceslot.providers.errors import Transient

VOICE = "v_" + "1" * 32


def speech(**change: object) -> dict[str, object]:
    return {"model": "tts-1", "voice": VOICE, "input": "Hello.", **change}


def refused(payload: object) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_speech(payload)
    return caught.value


def test_a_minimal_body_is_mp3_at_24k_with_the_engines_defaults() -> None:
    call = parse_speech(speech())
    assert call.response.media_type == "audio/mpeg"
    assert (call.request.format.encoding, call.request.format.sample_rate) == ("mp3", 24000)
    assert call.request.voice_id == VOICE and call.request.text == "Hello."
    assert call.request.options.speed is None


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_maps_to_an_encoding(name: str) -> None:
    call = parse_speech(speech(response_format=name))
    assert call.response is FORMATS[name]
    # flac is made from PCM once whole; the others stream in their own encoding
    expected = "pcm16" if name in ("pcm", "flac") else name
    assert call.request.format.encoding == expected


def test_every_openai_model_name_is_an_alias() -> None:
    for model in MODELS:
        parse_speech(speech(model=model))
    error = refused(speech(model="whisper-1"))
    assert (error.status, error.code, error.param) == (404, "model_not_found", "model")


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"response_format": "aac"}, "response_format"),
        ({"response_format": "MP3"}, "response_format"),
        ({"speed": 0.2}, "speed"),
        ({"speed": 4.01}, "speed"),
        ({"speed": "fast"}, "speed"),
        ({"speed": True}, "speed"),
        ({"instructions": "whisper"}, "instructions"),
        ({"stream_format": "sse"}, "stream_format"),
        ({"voice": 7}, "voice"),
        ({"input": ["a"]}, "input"),
        ({"temperature": 0.3}, "temperature"),
    ],
)
def test_bad_fields_are_400_naming_them(change: dict[str, object], param: str) -> None:
    error = refused(speech(**change))
    assert (error.status, error.param) == (400, param)
    assert error.message.startswith(f"{param}:")


def test_required_fields_and_the_body_shape() -> None:
    for name in ("model", "input", "voice"):
        payload = speech()
        del payload[name]
        error = refused(payload)
        assert (error.param, error.code) == (name, "missing_required_parameter")
    assert refused([1, 2]).status == 400


def test_speed_one_is_the_default_and_others_are_carried() -> None:
    assert parse_speech(speech(speed=1)).request.options.speed is None
    assert parse_speech(speech(speed=0.25)).request.options.speed == 0.25
    assert parse_speech(speech(speed=4)).request.options.speed == 4.0


def test_voice_may_be_given_as_an_object_and_empty_instructions_pass() -> None:
    call = parse_speech(speech(voice={"id": VOICE}, instructions=""))
    assert call.request.voice_id == VOICE


@pytest.mark.parametrize(
    ("exc", "status", "param", "kind"),
    [
        (errors.InvalidArgument("text", "is empty"), 400, "input", "invalid_request_error"),
        (errors.InvalidArgument("options.speed", "too fast"), 400, "speed", None),
        (errors.NotFound("voice", "v_x"), 404, "voice", "invalid_request_error"),
        (errors.Unauthenticated("unknown credentials"), 401, None, "invalid_request_error"),
        (errors.PermissionDenied("no"), 403, None, "permission_error"),
        (errors.QuotaExceeded("slow down", retry_after=2.5), 429, None, "requests"),
        (errors.Unavailable("busy", retry_after=1.0), 503, None, "server_error"),
        (Transient("provider down", provider="p"), 503, None, "server_error"),
        (errors.PayloadTooLarge("sample", 10), 413, None, "invalid_request_error"),
        (RuntimeError("secret detail"), 500, None, "server_error"),
    ],
)
def test_domain_errors_keep_their_meaning_in_openais_shape(exc, status, param, kind) -> None:
    error = from_exception(exc)
    assert error.status == status
    assert error.param == param
    if kind is not None:
        assert error.type == kind
    shape = body(error)["error"]
    assert set(shape) == {"message", "type", "param", "code"}
    if status == 500:
        assert shape["message"] == "internal error"
    if isinstance(exc, errors.QuotaExceeded):
        assert error.retry_after == 2.5
