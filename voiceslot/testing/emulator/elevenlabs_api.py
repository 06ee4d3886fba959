"""The emulated ElevenLabs REST API (the subset voiceslot uses), as a Starlette app.

Paths, headers, bodies and error shapes follow ElevenLabs' OpenAPI definition and
``providers/README.md``: ``xi-api-key`` authentication, ``{"detail": {"status",
"message"}}`` errors, FastAPI-shaped 422 lists, a ``request-id`` header on every answer.
Routes stay thin: parse, ask ``EmulatorState``, render.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from voiceslot.testing.emulator import alignment, audio
from voiceslot.testing.emulator._common import (
    DroppedResponse,
    Finally,
    ResponseDropped,
    begin_request,
    breaks_stream,
    extra_headers,
    fail_after_work,
    json_or_none,
    loses_response,
    new_request_id,
)
from voiceslot.testing.emulator.faults import Decision, Op
from voiceslot.testing.emulator.state import (
    ELEVENLABS,
    MAX_PAGE_SIZE,
    Account,
    EmulatorError,
    EmulatorState,
    VoiceRecord,
    decode_page_token,
    encode_page_token,
)

DEFAULT_OUTPUT_FORMAT = "mp3_44100_128"
DEFAULT_MODEL_ID = "eleven_multilingual_v2"
STREAM_CHUNK_BYTES = 4001
"""Odd on purpose: clients must re-align chunks on whole 16-bit samples."""
STREAM_CHUNK_SECONDS = 0.2
"""Audio per line of ``/stream/with-timestamps``."""
_MEDIA_TYPES = {"raw": "audio/pcm", "mp3": "audio/mpeg", "ogg": "audio/ogg"}


class ValidationFailed(EmulatorError):
    """A FastAPI-style 422: ``{"detail": [{"loc", "msg", "type"}]}``."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(422, "validation_error", "; ".join(e["msg"] for e in errors))
        self.errors = errors


def missing(*loc: str | int) -> dict[str, Any]:
    return {"loc": list(loc), "msg": "Field required", "type": "missing"}


VOICE_SETTING_RANGES = {
    "stability": (0.0, 1.0),
    "similarity_boost": (0.0, 1.0),
    "style": (0.0, 1.0),
    "speed": (0.7, 1.2),
}
"""``voice_settings``' numbers and the ranges the API validates them against."""


def voice_settings_errors(value: Any) -> list[dict[str, Any]]:
    """What the API's validation says of a request's ``voice_settings`` (422 entries);
    empty when it is absent or valid."""
    if value is None:
        return []
    loc = ["body", "voice_settings"]
    if not isinstance(value, dict):
        return [{"loc": loc, "msg": "Input should be a valid dictionary", "type": "dict_type"}]
    found = []
    for name, (low, high) in VOICE_SETTING_RANGES.items():
        number = value.get(name)
        if number is None:
            continue
        where = [*loc, name]
        if isinstance(number, bool) or not isinstance(number, int | float):
            found.append(
                {"loc": where, "msg": "Input should be a valid number", "type": "float_type"}
            )
        elif not low <= number <= high:
            found.append(
                {
                    "loc": where,
                    "msg": f"Input should be between {low:g} and {high:g}",
                    "type": "value_error",
                }
            )
    boost = value.get("use_speaker_boost")
    if boost is not None and not isinstance(boost, bool):
        found.append(
            {
                "loc": [*loc, "use_speaker_boost"],
                "msg": "Input should be a valid boolean",
                "type": "bool_type",
            }
        )
    return found


@dataclass(frozen=True)
class OutputFormat:
    container: str
    encoding: str
    sample_rate: int


def parse_output_format(value: str) -> OutputFormat:
    """``codec_rate[_bitrate]`` → what to encode; 422 for values outside the API's enum."""
    codec, _, rest = value.partition("_")
    rate_text = rest.split("_")[0]
    allowed_rates = {
        "pcm": {8000, 16000, 22050, 24000, 44100, 48000},
        "mp3": {22050, 44100},
        "ulaw": {8000},
        "alaw": {8000},
        "opus": {48000},
    }
    if (
        codec not in allowed_rates
        or not rate_text.isdigit()
        or int(rate_text) not in allowed_rates[codec]
    ):
        raise ValidationFailed(
            [
                {
                    "loc": ["query", "output_format"],
                    "msg": f"Input should be a supported output format, got {value!r}",
                    "type": "enum",
                }
            ]
        )
    rate = int(rate_text)
    container, encoding = {
        "pcm": ("raw", "pcm_s16le"),
        "mp3": ("mp3", ""),
        "ulaw": ("raw", "pcm_mulaw"),
        "alaw": ("raw", "pcm_alaw"),
        "opus": ("ogg", "opus"),
    }[codec]
    return OutputFormat(container, encoding, rate)


def character_cap(model_id: str) -> int:
    if "eleven_v3" in model_id:
        return 3_000
    if any(m in model_id for m in ("_v2_5", "flash", "turbo")):
        return 40_000
    return 10_000


def voice_json(voice: VoiceRecord, *, api_key: str) -> dict[str, Any]:
    """A ``VoiceResponseModel``."""
    return {
        "voice_id": voice.voice_id,
        "name": voice.name,
        "category": voice.category,
        "labels": dict(voice.labels),
        "description": voice.description or None,
        "preview_url": None,
        "available_for_tiers": [],
        "high_quality_base_model_ids": [],
        "samples": None,
        "settings": None,
        "is_owner": voice.owner == api_key,
        "is_legacy": False,
        "is_mixed": False,
        "created_at_unix": int(voice.created_at),
    }


def subscription_json(numbers: dict[str, Any]) -> dict[str, Any]:
    """An ``ExtendedSubscriptionResponseModel``; "no cap" is rendered as a large number
    where the schema wants an integer."""
    unlimited = 1_000_000_000
    return {
        "tier": numbers["tier"],
        "character_count": numbers["character_count"],
        "character_limit": numbers["character_limit"]
        if numbers["character_limit"] is not None
        else unlimited,
        "max_character_limit_extension": None,
        "can_extend_character_limit": False,
        "allowed_to_extend_character_limit": False,
        "next_character_count_reset_unix": None,
        "voice_slots_used": numbers["voice_slots_used"],
        "professional_voice_slots_used": 0,
        "voice_limit": numbers["voice_limit"] if numbers["voice_limit"] is not None else unlimited,
        "max_voice_add_edits": numbers["max_voice_add_edits"],
        "voice_add_edit_counter": numbers["voice_add_edit_counter"],
        "professional_voice_limit": 0,
        "can_extend_voice_limit": False,
        "can_use_instant_voice_cloning": numbers["can_use_instant_voice_cloning"],
        "can_use_professional_voice_cloning": False,
        "currency": "usd",
        "status": "active",
        "billing_period": "monthly_period",
        "character_refresh_period": "monthly_period",
        "next_invoice": None,
        "has_open_invoices": False,
    }


def list_filters(query: dict[str, str]) -> dict[str, Any]:
    """``voice_type``/``category``/``search`` → ``EmulatorState.list_voices`` filters."""
    voice_type = query.get("voice_type")
    return {
        "owned_only": voice_type in ("personal", "non-default", "workspace"),
        "premade_only": voice_type == "default",
        "category": query.get("category") or None,
        "search": query.get("search") or None,
    }


def page_size_of(query: dict[str, str]) -> int:
    raw = query.get("page_size", "10")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise ValidationFailed(
            [
                {
                    "loc": ["query", "page_size"],
                    "msg": f"Input should be an integer between 1 and {MAX_PAGE_SIZE}",
                    "type": "less_than_equal",
                }
            ]
        )
    return int(raw)


def error_response(exc: EmulatorError) -> JSONResponse:
    """An error in ElevenLabs' shapes (also a refused WebSocket upgrade's answer)."""
    headers = extra_headers(exc, new_request_id())
    if isinstance(exc, ValidationFailed):
        return JSONResponse({"detail": exc.errors}, status_code=422, headers=headers)
    body = {"detail": {"status": exc.code, "message": exc.message}}
    return JSONResponse(body, status_code=exc.status, headers=headers)


def timed_chunks(data: bytes, text: str, fmt: OutputFormat) -> list[bytes]:
    """``/stream/with-timestamps`` lines: ``StreamingAudioChunkWithTimestampsResponseModel``
    objects, each with the characters that start in its audio (seconds from the start of
    the whole answer). Raw encodings are cut every ``STREAM_CHUNK_SECONDS``; other
    containers go out whole."""
    chars = alignment.char_times(text)
    width = {"pcm_s16le": 2, "pcm_mulaw": 1, "pcm_alaw": 1}.get(fmt.encoding)
    # cuts: (first byte, end byte) of each line's audio; per_byte: seconds per byte
    if fmt.container != "raw" or width is None:
        cuts, per_byte = [(0, len(data))], 0.0
    else:
        step = int(fmt.sample_rate * STREAM_CHUNK_SECONDS) * width
        cuts = [(start, min(start + step, len(data))) for start in range(0, len(data), step)]
        per_byte = 1 / (width * fmt.sample_rate)
    lines = []
    for begin, end in cuts:
        window = (begin * per_byte, end * per_byte) if per_byte else (0.0, float("inf"))
        aligned = alignment.elevenlabs_http_alignment(alignment.in_window(chars, *window))
        body = {
            "audio_base64": base64.b64encode(data[begin:end]).decode(),
            "alignment": aligned,
            "normalized_alignment": aligned,
        }
        lines.append(json.dumps(body).encode() + b"\n")
    return lines


class ElevenLabsApi:
    """Routes bound to one ``EmulatorState``."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def app(self) -> Starlette:
        routes = [
            Route("/v1/voices/add", self.add_voice, methods=["POST"]),
            Route("/v1/voices", self.list_v1, methods=["GET"]),
            Route("/v2/voices", self.list_v2, methods=["GET"]),
            Route("/v1/voices/{voice_id}", self.get_voice, methods=["GET"]),
            Route("/v1/voices/{voice_id}", self.delete_voice, methods=["DELETE"]),
            Route("/v1/user/subscription", self.subscription, methods=["GET"]),
            Route("/v1/text-to-speech/{voice_id}", self.tts, methods=["POST"]),
            Route("/v1/text-to-speech/{voice_id}/stream", self.tts_stream, methods=["POST"]),
            Route(
                "/v1/text-to-speech/{voice_id}/stream/with-timestamps",
                self.tts_stream_timestamps,
                methods=["POST"],
            ),
        ]
        return Starlette(routes=routes, exception_handlers={EmulatorError: self.render_error})

    async def render_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, EmulatorError)
        return error_response(exc)

    # -- helpers ------------------------------------------------------------------------

    async def _begin(
        self,
        request: Request,
        op: Op,
        *,
        json_body: Any = None,
        form: dict[str, str] | None = None,
    ) -> tuple[Decision, Account]:
        return await begin_request(
            self.state,
            ELEVENLABS,
            request,
            op,
            json_body=json_body,
            form=form,
            credential=lambda: request.headers.get("xi-api-key"),
        )

    def _json(self, body: Any, decision: Decision, *, status: int = 200) -> Response:
        fail_after_work(decision)
        if loses_response(decision):
            return DroppedResponse()
        return JSONResponse(body, status_code=status, headers={"request-id": new_request_id()})

    # -- voices -------------------------------------------------------------------------

    async def add_voice(self, request: Request) -> Response:
        form = await request.form()
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        decision, account = await self._begin(request, Op.CLONE, form=fields)
        errors = []
        if not fields.get("name"):
            errors.append(missing("body", "name"))
        if not files:
            errors.append(missing("body", "files"))
        if errors:
            raise ValidationFailed(errors)
        labels: dict[str, str] = {}
        if fields.get("labels"):
            parsed = json_or_none(fields["labels"].encode())
            if not isinstance(parsed, dict):
                raise EmulatorError(400, "bad_request", "labels must be a JSON object")
            labels = {str(k): str(v) for k, v in parsed.items()}
        samples = [await f.read() for f in files]
        if not all(audio.is_audio(s) for s in samples):
            raise EmulatorError(400, "bad_request", "A sample is not a readable audio file.")
        if len(samples) != len(set(samples)):
            raise EmulatorError(400, "bad_request", "You cannot upload the same file twice.")
        voice = self.state.create_voice(
            account,
            name=fields["name"],
            sample=b"".join(samples),
            description=fields.get("description", ""),
            labels=labels,
        )
        return self._json({"voice_id": voice.voice_id, "requires_verification": False}, decision)

    async def list_v2(self, request: Request) -> Response:
        query = dict(request.query_params)
        decision, account = await self._begin(request, Op.LIST)
        size = page_size_of(query)
        token = query.get("next_page_token")
        after = decode_page_token(token) if token else 0
        page = self.state.list_voices(
            account, page_size=size, after_seq=after, **list_filters(query)
        )
        body = {
            "voices": [voice_json(v, api_key=account.api_key) for v in page.voices],
            "has_more": page.has_more,
            "total_count": page.total,
            "next_page_token": encode_page_token(page.voices[-1].seq)
            if page.has_more and page.voices
            else None,
        }
        return self._json(body, decision)

    async def list_v1(self, request: Request) -> Response:
        decision, account = await self._begin(request, Op.LIST)
        page = self.state.list_voices(account, page_size=None)
        body = {"voices": [voice_json(v, api_key=account.api_key) for v in page.voices]}
        return self._json(body, decision)

    async def get_voice(self, request: Request) -> Response:
        decision, account = await self._begin(request, Op.GET)
        voice = self.state.get_voice(account, request.path_params["voice_id"])
        return self._json(voice_json(voice, api_key=account.api_key), decision)

    async def delete_voice(self, request: Request) -> Response:
        decision, account = await self._begin(request, Op.DELETE)
        self.state.delete_voice(account, request.path_params["voice_id"])
        return self._json({"status": "ok"}, decision)

    async def subscription(self, request: Request) -> Response:
        decision, account = await self._begin(request, Op.SUBSCRIPTION)
        return self._json(subscription_json(self.state.subscription(account)), decision)

    # -- speech -------------------------------------------------------------------------

    async def tts(self, request: Request) -> Response:
        return await self._speak(request, stream=False)

    async def tts_stream(self, request: Request) -> Response:
        return await self._speak(request, stream=True)

    async def tts_stream_timestamps(self, request: Request) -> Response:
        return await self._speak(request, stream=True, timestamps=True)

    async def _speak(self, request: Request, *, stream: bool, timestamps: bool = False) -> Response:
        body = json_or_none(await request.body())
        query = dict(request.query_params)
        op = Op.TTS_STREAM if stream else Op.TTS
        decision, account = await self._begin(request, op, json_body=body)
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            raise ValidationFailed([missing("body", "text")])
        if errors := voice_settings_errors(body.get("voice_settings")):
            raise ValidationFailed(errors)
        speed = float((body.get("voice_settings") or {}).get("speed") or 1.0)
        fmt = parse_output_format(query.get("output_format", DEFAULT_OUTPUT_FORMAT))
        text: str = body["text"]
        model_id = str(body.get("model_id") or DEFAULT_MODEL_ID)
        if len(text) > character_cap(model_id):
            raise EmulatorError(
                400,
                "max_character_limit_exceeded",
                f"Text is {len(text)} characters; {model_id} accepts {character_cap(model_id)}.",
            )
        voice = self.state.get_voice(account, request.path_params["voice_id"])
        self.state.begin_tts(account, characters=len(text))
        try:
            if decision.latency_s > 0:
                await asyncio.sleep(decision.latency_s)
            samples = audio.render_speech(
                text,
                voice_key=voice.sample_sha256 or voice.voice_id,
                sample_rate=fmt.sample_rate,
                seed=int(body.get("seed") or 0),
                speed=speed,
            )
            data = audio.encode(
                samples, sample_rate=fmt.sample_rate, container=fmt.container, encoding=fmt.encoding
            )
        except BaseException:
            self.state.end_tts(account)
            raise
        media_type = _MEDIA_TYPES[fmt.container]
        headers = {"request-id": new_request_id(), "character-cost": str(len(text))}
        if not stream:
            self.state.end_tts(account)
            if loses_response(decision):
                return DroppedResponse(media_type)
            return Response(data, media_type=media_type, headers=headers)
        broken = breaks_stream(decision) or loses_response(decision)
        if timestamps:
            # JSON objects one a line: base64 audio with the characters it speaks.
            media_type = "application/json"
            chunks = self._chunks(timed_chunks(data, text, fmt), broken=broken)
        else:
            pieces = [
                data[start : start + STREAM_CHUNK_BYTES]
                for start in range(0, len(data), STREAM_CHUNK_BYTES)
            ]
            chunks = self._chunks(pieces, broken=broken)
        response = StreamingResponse(chunks, media_type=media_type, headers=headers)
        return Finally(response, lambda: self.state.end_tts(account))

    async def _chunks(self, pieces: list[bytes], *, broken: bool) -> AsyncIterator[bytes]:
        for index, piece in enumerate(pieces):
            yield piece
            if index == 0:
                if broken:
                    raise ResponseDropped("scripted fault: stream broken after the first chunk")
                await asyncio.to_thread(self.state.wait_stream_gate, 60.0)
