"""The emulated Cartesia REST API (the subset voiceslot uses), as a Starlette app.

Follows Cartesia's OpenAPI definition and ``providers/README.md``: ``Authorization:
Bearer`` (``X-API-Key`` accepted too), a required ``Cartesia-Version: YYYY-MM-DD`` header,
cursor pagination (``limit``, ``starting_after`` → ``has_more``, ``next_page``), and SSE
text-to-speech whose events are ``chunk``/``done``/``error`` JSON objects (plus
``timestamps`` after each chunk when the request sets ``add_timestamps``). REST errors are
JSON ``{error_code, title, message, request_id, status_code}``, except authentication and
rate-limit answers, which are plain text as a gateway sends them: clients must accept both.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from voiceslot.providers.cartesia import EMOTIONS
from voiceslot.testing.emulator import alignment, audio
from voiceslot.testing.emulator._common import (
    DroppedResponse,
    Finally,
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
    CARTESIA,
    MAX_PAGE_SIZE,
    Account,
    EmulatorError,
    EmulatorState,
    VoiceRecord,
)

SUPPORTED_LANGUAGES = frozenset(
    [
        "en",
        "fr",
        "de",
        "es",
        "pt",
        "zh",
        "ja",
        "hi",
        "it",
        "ko",
        "nl",
        "pl",
        "ru",
        "sv",
        "tr",
        "tl",
        "bg",
        "ro",
        "ar",
        "cs",
        "el",
        "fi",
        "hr",
        "ms",
        "sk",
        "da",
        "ta",
        "uk",
        "hu",
        "no",
        "vi",
        "bn",
        "th",
        "he",
        "ka",
        "id",
        "te",
        "gu",
        "kn",
        "ml",
        "mr",
        "pa",
    ]
)
SAMPLE_RATES = frozenset({8000, 16000, 22050, 24000, 44100, 48000})
RAW_ENCODINGS = {"pcm_s16le": 2, "pcm_f32le": 4, "pcm_mulaw": 1, "pcm_alaw": 1}
"""Encodings and their bytes per sample."""
_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_REGIONS = {"en": "US", "ja": "JP", "zh": "CN", "ko": "KR", "hi": "IN", "sv": "SE", "da": "DK"}
_PLAIN_TEXT_STATUSES = frozenset({401, 429})
_MEDIA_TYPES = {"raw": "application/octet-stream", "wav": "audio/wav", "mp3": "audio/mpeg"}
SSE_CHUNK_SECONDS = 0.1


def bad_request(message: str, code: str = "invalid_request") -> EmulatorError:
    return EmulatorError(400, code, message)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def locale_of(language: str) -> str:
    return f"{language}-{_REGIONS.get(language, language.upper())}"


def voice_json(voice: VoiceRecord, *, api_key: str) -> dict[str, Any]:
    """A ``Voice``."""
    return {
        "id": voice.voice_id,
        "is_owner": voice.owner == api_key,
        "is_public": voice.owner is None,
        "name": voice.name,
        "description": voice.description,
        "created_at": iso(voice.created_at),
        "language": voice.language,
        "locales": [{"locale": locale_of(voice.language), "is_native": True}],
    }


def voice_metadata_json(voice: VoiceRecord) -> dict[str, Any]:
    """A ``VoiceMetadata`` (the clone answer)."""
    return {
        "id": voice.voice_id,
        "user_id": "user_" + hashlib.sha256((voice.owner or "").encode()).hexdigest()[:12],
        "is_public": False,
        "name": voice.name,
        "description": voice.description,
        "created_at": iso(voice.created_at),
        "language": voice.language,
    }


def parse_output_format(value: Any, *, sse: bool) -> tuple[str, str, int]:
    """(container, encoding, sample_rate) from an ``OutputFormat``; 400 when invalid."""
    if not isinstance(value, dict):
        raise bad_request("output_format is required")
    container = value.get("container")
    rate = value.get("sample_rate")
    if rate not in SAMPLE_RATES:
        raise bad_request(f"sample_rate must be one of {sorted(SAMPLE_RATES)}")
    allowed = ("raw",) if sse else ("raw", "wav", "mp3")
    if container not in allowed:
        raise bad_request(f"container must be one of {list(allowed)}")
    if container == "mp3":
        return "mp3", "", int(rate)
    encoding = value.get("encoding")
    if encoding not in RAW_ENCODINGS:
        raise bad_request(f"encoding must be one of {sorted(RAW_ENCODINGS)}")
    return str(container), str(encoding), int(rate)


def parse_tts_body(body: Any, *, sse: bool) -> tuple[str, str, tuple[str, str, int]]:
    """(transcript, voice id, output format) from a ``TTSRequest``/``TTSSSERequest``."""
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    for name in ("model_id", "transcript", "voice", "output_format"):
        if name not in body:
            raise bad_request(f"{name} is required")
    voice = body["voice"]
    if not isinstance(voice, dict) or voice.get("mode") != "id" or not voice.get("id"):
        raise bad_request('voice must be {"mode": "id", "id": ...}')
    if not isinstance(body["transcript"], str) or not body["transcript"]:
        raise bad_request("transcript must be a non-empty string")
    language = body.get("language")
    if language is not None and language not in SUPPORTED_LANGUAGES:
        raise bad_request(f"unsupported language {language!r}")
    return body["transcript"], str(voice["id"]), parse_output_format(body["output_format"], sse=sse)


GENERATION_RANGES = {"speed": (0.6, 1.5), "volume": (0.5, 2.0)}
"""sonic-3's ``generation_config`` numbers and the ranges the API takes."""


def parse_generation_config(value: Any) -> float:
    """The speed a request's ``generation_config`` asks for (1.0 when it has none); 400
    for values the API refuses."""
    if value is None:
        return 1.0
    if not isinstance(value, dict):
        raise bad_request("generation_config must be an object")
    unknown = set(value) - {*GENERATION_RANGES, "emotion"}
    if unknown:
        raise bad_request(f"generation_config has unknown fields: {sorted(unknown)}")
    for name, (low, high) in GENERATION_RANGES.items():
        number = value.get(name)
        if number is None:
            continue
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise bad_request(f"generation_config.{name} must be a number")
        if not low <= number <= high:
            raise bad_request(f"generation_config.{name} must be between {low:g} and {high:g}")
    emotion = value.get("emotion")
    if emotion is not None and emotion not in EMOTIONS:
        raise bad_request(f"generation_config.emotion {emotion!r} is not a supported emotion")
    return float(value.get("speed") or 1.0)


def sse_event(payload: dict[str, Any]) -> bytes:
    return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n".encode()


class CartesiaApi:
    """Routes bound to one ``EmulatorState``."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def app(self) -> Starlette:
        routes = [
            Route("/voices/clone", self.clone, methods=["POST"]),
            Route("/voices", self.list_voices, methods=["GET"]),
            Route("/voices/{id}", self.get_voice, methods=["GET"]),
            Route("/voices/{id}", self.delete_voice, methods=["DELETE"]),
            Route("/tts/bytes", self.tts_bytes, methods=["POST"]),
            Route("/tts/sse", self.tts_sse, methods=["POST"]),
        ]
        return Starlette(routes=routes, exception_handlers={EmulatorError: self.render_error})

    async def render_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, EmulatorError)
        request_id = new_request_id()
        headers = extra_headers(exc, request_id)
        if exc.status in _PLAIN_TEXT_STATUSES:
            return PlainTextResponse(exc.message, status_code=exc.status, headers=headers)
        body = {
            "error_code": exc.code,
            "title": exc.code.replace("_", " ").capitalize(),
            "message": exc.message,
            "request_id": request_id,
            "status_code": exc.status,
        }
        return JSONResponse(body, status_code=exc.status, headers=headers)

    # -- helpers ------------------------------------------------------------------------

    async def _begin(
        self,
        request: Request,
        op: Op,
        *,
        json_body: Any = None,
        form: dict[str, str] | None = None,
    ) -> tuple[Decision, Account]:
        def check_version() -> None:
            version = request.headers.get("cartesia-version")
            if not version or not _VERSION.match(version):
                raise bad_request("A valid Cartesia-Version header (YYYY-MM-DD) is required.")

        def credential() -> str | None:
            auth = request.headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                return auth[7:].strip()
            return request.headers.get("x-api-key")

        return await begin_request(
            self.state,
            CARTESIA,
            request,
            op,
            json_body=json_body,
            form=form,
            credential=credential,
            check=check_version,
        )

    def _json(self, body: Any, decision: Decision) -> Response:
        fail_after_work(decision)
        if loses_response(decision):
            return DroppedResponse()
        return JSONResponse(body)

    # -- voices -------------------------------------------------------------------------

    async def clone(self, request: Request) -> Response:
        form = await request.form()
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        clip = form.get("clip")
        decision, account = await self._begin(request, Op.CLONE, form=fields)
        if not isinstance(clip, UploadFile):
            raise bad_request("clip is required")
        if not fields.get("name"):
            raise bad_request("name is required")
        language = fields.get("language", "")
        if language not in SUPPORTED_LANGUAGES:
            raise bad_request(f"language must be one of the supported languages, got {language!r}")
        sample = await clip.read()
        if not audio.is_audio(sample):
            raise bad_request("clip is not a readable audio file", "invalid_audio")
        voice = self.state.create_voice(
            account,
            name=fields["name"],
            sample=sample,
            description=fields.get("description", ""),
            language=language,
        )
        return self._json(voice_metadata_json(voice), decision)

    async def list_voices(self, request: Request) -> Response:
        query = dict(request.query_params)
        decision, account = await self._begin(request, Op.LIST)
        raw_limit = query.get("limit", "10")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE_SIZE:
            raise bad_request(f"limit must be between 1 and {MAX_PAGE_SIZE}")
        cursor = query.get("starting_after")
        page = self.state.list_voices(
            account,
            page_size=int(raw_limit),
            after_seq=self.state.seq_of(cursor) if cursor else 0,
            owned_only=query.get("is_owner", "").lower() == "true",
            search=query.get("q") or None,
        )
        body = {
            "data": [voice_json(v, api_key=account.api_key) for v in page.voices],
            "has_more": page.has_more,
            "next_page": page.voices[-1].voice_id if page.has_more and page.voices else None,
        }
        return self._json(body, decision)

    async def get_voice(self, request: Request) -> Response:
        decision, account = await self._begin(request, Op.GET)
        voice = self.state.get_voice(account, request.path_params["id"])
        return self._json(voice_json(voice, api_key=account.api_key), decision)

    async def delete_voice(self, request: Request) -> Response:
        decision, account = await self._begin(request, Op.DELETE)
        self.state.delete_voice(account, request.path_params["id"])
        fail_after_work(decision)
        if loses_response(decision):
            return DroppedResponse()
        return Response(status_code=204)

    # -- speech -------------------------------------------------------------------------

    async def tts_bytes(self, request: Request) -> Response:
        body = json_or_none(await request.body())
        decision, account = await self._begin(request, Op.TTS, json_body=body)
        transcript, voice_id, (container, encoding, rate) = parse_tts_body(body, sse=False)
        speed = parse_generation_config(body.get("generation_config"))
        voice = self.state.get_voice(account, voice_id)
        self.state.begin_tts(account, characters=len(transcript))
        try:
            if decision.latency_s > 0:
                await asyncio.sleep(decision.latency_s)
            data = self._render(transcript, voice, container, encoding, rate, speed=speed)
        finally:
            self.state.end_tts(account)
        if loses_response(decision):
            return DroppedResponse(_MEDIA_TYPES[container])
        return Response(data, media_type=_MEDIA_TYPES[container])

    async def tts_sse(self, request: Request) -> Response:
        body = json_or_none(await request.body())
        decision, account = await self._begin(request, Op.TTS_STREAM, json_body=body)
        transcript, voice_id, (_, encoding, rate) = parse_tts_body(body, sse=True)
        speed = parse_generation_config(body.get("generation_config"))
        voice = self.state.get_voice(account, voice_id)
        self.state.begin_tts(account, characters=len(transcript))
        try:
            if decision.latency_s > 0:
                await asyncio.sleep(decision.latency_s)
            data = self._render(transcript, voice, "raw", encoding, rate, speed=speed)
        except BaseException:
            self.state.end_tts(account)
            raise
        chunk_bytes = int(rate * SSE_CHUNK_SECONDS) * RAW_ENCODINGS[encoding]
        words = None
        if isinstance(body, dict) and body.get("add_timestamps"):
            words = alignment.word_spans(alignment.char_times(transcript))
        seconds_per_byte = 1 / (rate * RAW_ENCODINGS[encoding])
        events = self._events(data, chunk_bytes, decision, words, seconds_per_byte)
        response = StreamingResponse(events, media_type="text/event-stream")
        return Finally(response, lambda: self.state.end_tts(account))

    async def _events(
        self,
        data: bytes,
        chunk_bytes: int,
        decision: Decision,
        words: list[alignment.WordSpan] | None = None,
        seconds_per_byte: float = 0.0,
    ) -> AsyncIterator[bytes]:
        for index, start in enumerate(range(0, len(data), chunk_bytes)):
            chunk = data[start : start + chunk_bytes]
            yield sse_event(
                {
                    "type": "chunk",
                    "done": False,
                    "status_code": 206,
                    "step_time": 1.0,
                    "data": base64.b64encode(chunk).decode(),
                }
            )
            if words:  # ``add_timestamps``: the words that start in this chunk, after it
                begin, end = start * seconds_per_byte, (start + len(chunk)) * seconds_per_byte
                spoken = [w for w in words if begin <= w.start_s < end]
                if spoken:
                    yield sse_event(
                        {
                            "type": "timestamps",
                            "done": False,
                            "status_code": 206,
                            "word_timestamps": alignment.cartesia_word_timestamps(spoken),
                        }
                    )
            if index == 0:
                if loses_response(decision):
                    return  # the stream just stops: no more audio, no done event
                if breaks_stream(decision):
                    assert decision.fault is not None
                    yield sse_event(
                        {
                            "type": "error",
                            "done": True,
                            "status_code": decision.fault.status,
                            "title": "Generation failed",
                            "message": "The generation failed (scripted fault).",
                            "error_code": "generation_failed",
                            "request_id": new_request_id(),
                        }
                    )
                    return
                await asyncio.to_thread(self.state.wait_stream_gate, 60.0)
        yield sse_event({"type": "done", "done": True, "status_code": 200})

    @staticmethod
    def _render(
        transcript: str,
        voice: VoiceRecord,
        container: str,
        encoding: str,
        rate: int,
        *,
        speed: float = 1.0,
    ) -> bytes:
        samples = audio.render_speech(
            transcript,
            voice_key=voice.sample_sha256 or voice.voice_id,
            sample_rate=rate,
            speed=speed,
        )
        return audio.encode(samples, sample_rate=rate, container=container, encoding=encoding)
