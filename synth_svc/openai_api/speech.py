"""``POST /v1/audio/speech``'s body, checked, as a synthesis request. Pure.

The fields are OpenAI's (``model``, ``input``, ``voice``, ``response_format``, ``speed``,
``instructions``, ``stream_format``), read with voiceslot's meaning:

- ``model``: one of ``MODELS``. The OpenAI names are aliases of the one voiceslot model,
  so clients configured for OpenAI work unchanged; anything else is 404
  ``model_not_found``, as OpenAI answers.
- ``voice``: a voiceslot voice id (``v_…``) of the caller's; OpenAI's built-in names
  (``alloy``…) are not voices here and fail as any malformed id does.
- ``response_format``: as OpenAI, 24 kHz mono: ``mp3`` (default), ``opus`` (Ogg),
  ``wav``, ``flac``, ``pcm`` (raw 16-bit little-endian). ``aac`` is refused (400): no AAC
  encoder ships with voiceslot (libsndfile has none, and FFmpeg is not a dependency).
- ``speed``: OpenAI's 0.25..4.0 is checked here; the value then goes to the voice's
  engine as the speaking-rate multiple it is, and an engine that cannot go that fast or
  slow refuses it by name (``speed``), never clamped.
- ``instructions`` (steerable tone, gpt-4o-mini-tts only): refused when not empty, since
  no engine here can follow it and ignoring it would be a silent lie.
- ``stream_format``: ``audio`` only (the body is the audio, streamed as it is made);
  ``sse`` is refused.
- ``language``: a voiceslot extension (BCP 47; default: the voice's language).

Unknown fields are refused (400 naming them), as OpenAI does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from synth_svc.domain.formats import OutputFormat
from synth_svc.openai_api.errors import ApiError, bad_request
from synth_svc.service import SpeechRequest
from voiceslot.errors import shown
from voiceslot.providers.base import SpeechOptions

MODELS = ("voiceslot", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
"""Accepted ``model`` names; all speak with the voice's own engine."""
OPENAI_RATE = 24000
"""OpenAI's output rate, for every format."""
MIN_SPEED, MAX_SPEED = 0.25, 4.0


@dataclass(frozen=True)
class ResponseFormat:
    encoding: str
    """The synthesizer's encoding; ``flac`` is made from PCM once the audio is whole."""
    media_type: str
    streamed: bool = True


FORMATS = {
    "mp3": ResponseFormat("mp3", "audio/mpeg"),
    "opus": ResponseFormat("opus", "audio/ogg"),
    "wav": ResponseFormat("wav", "audio/wav"),
    "pcm": ResponseFormat("pcm16", "audio/pcm"),
    # A FLAC header states the stream's length; one streamed with the length unknown
    # (which the format allows) makes libsndfile and others fail at its end. Sent whole.
    "flac": ResponseFormat("flac", "audio/flac", streamed=False),
}
REFUSED_FORMATS = {
    "aac": "aac is not available here: no AAC encoder is installed; use mp3, opus, "
    "wav, flac or pcm",
}
FIELDS = frozenset(
    {"model", "input", "voice", "response_format", "speed", "instructions", "stream_format"}
    | {"language"}
)


@dataclass(frozen=True)
class SpeechCall:
    request: SpeechRequest
    response: ResponseFormat


def _string(body: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise bad_request(name, "is required", code="missing_required_parameter")
        return None
    if not isinstance(value, str):
        raise bad_request(name, "must be a string")
    return value


def _voice(body: dict[str, Any]) -> str:
    value = body.get("voice")
    if isinstance(value, dict):  # OpenAI's newer form for custom voices: {"id": ...}
        value = value.get("id")
    if value is None:
        raise bad_request("voice", "is required", code="missing_required_parameter")
    if not isinstance(value, str):
        raise bad_request("voice", 'must be a voice id (a string, or {"id": ...})')
    return value


def _speed(body: dict[str, Any]) -> float | None:
    value = body.get("speed")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad_request("speed", "must be a number")
    if not MIN_SPEED <= value <= MAX_SPEED:
        raise bad_request("speed", f"must be {MIN_SPEED:g}..{MAX_SPEED:g}, not {value:g}")
    # 1.0 is every engine's normal rate: left unset, so engines without a speed control
    # (a pre-sonic-3 Cartesia model) still answer a client that always sends it.
    return None if value == 1.0 else float(value)


def parse_speech(body: Any) -> SpeechCall:
    """The synthesis ``body`` asks for, or the 400/404 that says what is wrong with it."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise bad_request(unknown[0], "is not a parameter of this API", code="unknown_parameter")
    model = _string(body, "model", required=True)
    if model not in MODELS:
        raise ApiError(
            404,
            f"The model {shown(model)} does not exist; models: {', '.join(MODELS)}",
            param="model",
            code="model_not_found",
        )
    text = _string(body, "input", required=True)
    assert text is not None
    if _string(body, "instructions", required=False):
        raise bad_request(
            "instructions", "is not supported: no voiceslot engine takes spoken directions"
        )
    stream_format = _string(body, "stream_format", required=False) or "audio"
    if stream_format != "audio":
        raise bad_request("stream_format", "only 'audio' is supported")
    name = _string(body, "response_format", required=False) or "mp3"
    if name in REFUSED_FORMATS:
        raise bad_request("response_format", REFUSED_FORMATS[name], code="unsupported_format")
    response = FORMATS.get(name)
    if response is None:
        raise bad_request(
            "response_format", f"must be one of {', '.join(FORMATS)}, not {shown(name)}"
        )
    encoding = response.encoding if response.streamed else "pcm16"
    request = SpeechRequest(
        voice_id=_voice(body),
        text=text,
        format=OutputFormat(encoding, OPENAI_RATE),
        language=_string(body, "language", required=False) or "",
        options=SpeechOptions(speed=_speed(body)),
    )
    return SpeechCall(request, response)
