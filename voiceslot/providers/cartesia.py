"""Cartesia adapter: instant voice cloning and Sonic text-to-speech over the REST API.

One instance is one Cartesia account (``ProviderConfig`` with ``kind="cartesia"``). Every
request carries ``Authorization: Bearer <key>`` and the required ``Cartesia-Version``
header (``ProviderConfig.api_version``).

- Clone: ``POST /voices/clone`` (multipart ``clip``, ``name``, ``language``,
  ``description``). Cartesia voices have no free-form labels, so our deterministic label is
  the voice's name and is repeated in the description as ``[voiceslot_label=<label>]``; the
  description marker is what tells our voices from voices a person created by hand.
  A clone is never retried here; after ``Transient`` the caller looks the label up first.
- Look-up and listing: ``GET /voices`` with ``limit``/``starting_after`` cursors
  (``has_more``, ``next_page``), ``is_owner=true``, and ``q`` for ``find_by_label``.
- Slots: Cartesia publishes no cap on instant clones, so the limit is
  ``ProviderConfig.capacity`` and "used" is the number of our voices in the account.
- Speech: ``POST /tts/bytes`` with ``output_format={container: raw, encoding: pcm_s16le,
  sample_rate}`` (exactly ``base.PcmAudio``), and ``POST /tts/sse`` whose events are
  ``chunk`` (base64 audio), ``done`` and ``error``.

REST errors arrive as JSON (``{message, error_code, title, request_id, ...}``) or as plain
text; stream errors as an ``error`` event with the same fields plus ``status_code``. Both
become the ``errors`` taxonomy in ``classify_error``, a pure function.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from voiceslot.config import ProviderConfig
from voiceslot.errors import InvalidArgument
from voiceslot.providers import cartesia_live, http, live_ws, timestamps
from voiceslot.providers.base import (
    Capacity,
    CloneRequest,
    LiveRequest,
    LiveSession,
    PcmAudio,
    RemoteVoice,
    SpeechOptions,
    SynthesisRequest,
    WordTime,
)
from voiceslot.providers.errors import Fatal, ProviderError, Transient, VoiceNotFound
from voiceslot.providers.options import OptionRules, check_against, set_options

DEFAULT_BASE_URL = "https://api.cartesia.ai"
DEFAULT_MODEL_ID = "sonic-3"
SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
DEFAULT_SAMPLE_RATE = 24000
PAGE_SIZE = 100
"""``GET /voices`` maximum ``limit``."""
# fmt: off
EMOTIONS = frozenset(
    {
        "happy", "excited", "enthusiastic", "elated", "euphoric", "triumphant",
        "amazed", "surprised", "flirtatious", "curious", "content",
        "peaceful", "serene", "calm", "grateful", "affectionate", "trust",
        "sympathetic", "anticipation", "mysterious", "angry", "mad", "outraged",
        "frustrated", "agitated", "threatened", "disgusted", "contempt", "envious",
        "sarcastic", "ironic", "sad", "dejected", "melancholic", "disappointed", "hurt",
        "guilty", "bored", "tired", "rejected", "nostalgic", "wistful", "apologetic",
        "hesitant", "insecure", "confused", "resigned", "anxious", "panicked",
        "alarmed", "scared", "neutral", "proud", "confident", "distant", "skeptical",
        "contemplative", "determined",
    }
)
# fmt: on
"""Sonic-3's ``generation_config.emotion`` values: the ``Emotion`` enum of Cartesia's
OpenAPI file (its guide also names "joking/comedic", which the API schema lacks)."""
OPTION_RULES = OptionRules(
    "Cartesia",
    ranges={"speed": (0.6, 1.5), "volume": (0.5, 2.0)},
    choices={"emotion": EMOTIONS},
)
"""What sonic-3's ``generation_config`` takes."""
GENERATION_CONFIG_MODELS = "sonic-3"
"""Model ids starting with this take ``generation_config``; earlier models ignore it."""
_LABEL_MARKER = re.compile(r"\[voiceslot_label=([^\]\s]+)\]")


def generation_config(opts: SpeechOptions) -> dict[str, Any]:
    """The request's ``generation_config``: only what the caller set."""
    values = {"speed": opts.speed, "volume": opts.volume, "emotion": opts.emotion}
    return {name: value for name, value in values.items() if value is not None}


def describe(label: str, description: str) -> str:
    """The voice description: the caller's text followed by our label marker."""
    marker = f"[voiceslot_label={label}]"
    return f"{description.strip()} {marker}" if description.strip() else marker


def label_of(voice: Mapping[str, Any]) -> str | None:
    """Our label on a voice (from the description marker), or None for voices we did not
    create."""
    match = _LABEL_MARKER.search(str(voice.get("description") or ""))
    return match.group(1) if match else None


def to_remote_voice(voice: Mapping[str, Any]) -> RemoteVoice:
    return RemoteVoice(
        provider_voice_id=str(voice["id"]),
        label=label_of(voice),
        name=str(voice.get("name") or ""),
    )


def matches_label(voice: Mapping[str, Any], label: str) -> bool:
    """Exact match on the marker or the name: ``q`` is a substring search, so
    ``vs-a-g1`` also finds ``vs-a-g10``."""
    return label_of(voice) == label or voice.get("name") == label


def language_code(bcp47: str) -> str:
    """Cartesia's language field is the primary subtag (``en-GB`` → ``en``)."""
    return (bcp47 or "en").split("-")[0].split("_")[0].lower()


def output_format(sample_rate_hz: int) -> dict[str, Any]:
    rate = http.nearest_rate(sample_rate_hz, SAMPLE_RATES, default=DEFAULT_SAMPLE_RATE)
    return {"container": "raw", "encoding": "pcm_s16le", "sample_rate": rate}


def parse_error_body(body: bytes) -> tuple[str, str, str | None]:
    """(code, message, request_id) from a JSON error object or a plain-text body."""
    data = http.json_or_none(body)
    if isinstance(data, dict):
        return error_fields(data)
    return "", http.body_text(body) or "(empty body)", None


def error_fields(data: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """(code, message, request_id) from an error object (REST body or stream event)."""
    code = str(data.get("error_code") or "")
    message = str(
        data.get("message") or data.get("error") or data.get("title") or code or "unknown error"
    )
    request_id = data.get("request_id")
    return code, message, str(request_id) if request_id else None


def classify_error(
    status: int,
    body: bytes,
    *,
    provider: str,
    retry_after: float | None = None,
    voice_scoped: bool = False,
) -> ProviderError:
    """One error of the taxonomy for a Cartesia REST error response."""
    code, message, request_id = parse_error_body(body)
    return _error(status, code, message, request_id, provider, retry_after, voice_scoped)


def classify_stream_error(
    event: Mapping[str, Any], *, provider: str, voice_scoped: bool = True
) -> ProviderError:
    """One error of the taxonomy for an SSE ``error`` event
    (``{type: "error", status_code, title, message, error_code, request_id}``)."""
    code, message, request_id = error_fields(event)
    try:
        status = int(event.get("status_code") or 500)
    except (TypeError, ValueError):
        status = 500
    return _error(status, code, message, request_id, provider, None, voice_scoped)


def _error(
    status: int,
    code: str,
    message: str,
    request_id: str | None,
    provider: str,
    retry_after: float | None,
    voice_scoped: bool,
) -> ProviderError:
    text = f"{code}: {message}" if code and code not in message else message
    if request_id:
        text = f"{text} (request_id {request_id})"
    return http.error_for_status(
        status, text, provider=provider, retry_after=retry_after, voice_scoped=voice_scoped
    )


def interpret_event(event: http.SseEvent | None, *, provider: str) -> bytes | None:
    """What one SSE event means for the audio stream: the audio bytes of a ``chunk`` (b""
    for events that carry none, e.g. ``timestamps``), None for ``done``; an ``error``
    event raises its taxonomy error."""
    if event is None:
        return b""
    try:
        payload = json.loads(event.data)
    except ValueError:
        return b""
    if not isinstance(payload, dict):
        return b""
    kind = payload.get("type") or event.event
    if kind == "done":
        return None
    if kind == "error":
        raise classify_stream_error(payload, provider=provider)
    if kind != "chunk":
        return b""
    try:
        return base64.b64decode(str(payload.get("data") or ""), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Fatal(f"stream chunk is not base64: {exc}", provider=provider) from exc


def event_words(event: http.SseEvent | None) -> list[WordTime]:
    """Words of a ``timestamps`` event (seconds from the start of the audio); none for
    any other event."""
    if event is None:
        return []
    payload = http.json_or_none(event.data.encode())
    if not isinstance(payload, dict) or (payload.get("type") or event.event) != "timestamps":
        return []
    return timestamps.cartesia_words(payload)


class CartesiaProvider(http.HttpAdapter):
    """A Cartesia account behind ``base.Provider``."""

    kind = "cartesia"

    def __init__(self, config: ProviderConfig, *, client: httpx.AsyncClient | None = None) -> None:
        if config.kind != self.kind:
            raise ValueError(f"provider {config.name!r} is {config.kind!r}, not {self.kind!r}")
        if config.api_key is None:
            raise ValueError(f"provider {config.name!r} needs an api_key")
        self.name = config.name
        self._config = config
        self._base_url = (config.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._api_key = config.api_key.get_secret_value()
        self._headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Cartesia-Version": config.api_version,
        }
        self._model_id = config.model_id or DEFAULT_MODEL_ID
        self._timeout = http.request_timeout(config.timeout_s)
        self._owns_client = client is None
        self._client = client or http.build_client(timeout_s=config.timeout_s)

    # -- voices -------------------------------------------------------------------------

    async def clone(self, request: CloneRequest) -> RemoteVoice:
        data = {
            "name": request.label,
            "language": language_code(request.language),
            "description": describe(request.label, request.description),
        }
        files = {
            "clip": (
                request.sample_filename,
                request.sample,
                http.sample_content_type(request.sample_filename),
            )
        }
        # Sent exactly once: on Transient the caller looks the label up before cloning again.
        response = await self._send("POST", "/voices/clone", what="clone", data=data, files=files)
        body = self._json(response, what="clone")
        voice_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(voice_id, str) or not voice_id:
            raise Fatal("clone: response has no id", provider=self.name)
        return RemoteVoice(provider_voice_id=voice_id, label=request.label, name=request.label)

    async def find_by_label(self, label: str) -> RemoteVoice | None:
        async for voice in self._pages({"q": label}, what="find_by_label"):
            if matches_label(voice, label):
                return to_remote_voice(voice)
        return None

    async def list_voices(self, *, label_prefix: str = "") -> AsyncIterator[RemoteVoice]:
        async for voice in self._pages({}, what="list_voices"):
            remote = to_remote_voice(voice)
            if label_prefix and not (remote.label or "").startswith(label_prefix):
                continue
            yield remote

    async def exists(self, provider_voice_id: str) -> bool:
        try:
            await self._send(
                "GET",
                f"/voices/{quote(provider_voice_id, safe='')}",
                what="get",
                voice_scoped=True,
            )
        except VoiceNotFound:
            return False
        return True

    async def delete(self, provider_voice_id: str) -> None:
        await self._send(
            "DELETE",
            f"/voices/{quote(provider_voice_id, safe='')}",
            what="delete",
            voice_scoped=True,
        )

    async def capacity(self) -> Capacity:
        used = 0
        async for voice in self._pages({}, what="capacity"):
            if label_of(voice) is not None:
                used += 1
        return Capacity(limit=self._config.capacity, used=used, add_edit_remaining=None)

    # -- speech -------------------------------------------------------------------------

    async def synthesize(self, request: SynthesisRequest) -> PcmAudio:
        payload = self._tts_payload(request)
        response = await self._send(
            "POST", "/tts/bytes", what="synthesize", json=payload, voice_scoped=True
        )
        pcm = response.content
        rate = payload["output_format"]["sample_rate"]
        return PcmAudio(pcm16=pcm[: len(pcm) - len(pcm) % 2], sample_rate=rate)

    async def synthesize_stream(self, request: SynthesisRequest) -> AsyncIterator[PcmAudio]:
        payload = self._tts_payload(request)
        rate = payload["output_format"]["sample_rate"]
        timed = request.options.word_timings
        if timed:
            payload["add_timestamps"] = True
        aligner = http.SampleAligner()
        decoder = http.SseDecoder()
        what = "synthesize_stream"
        with http.transport_errors(self.name, what):
            async with self._client.stream(
                "POST",
                self._base_url + "/tts/sse",
                json=payload,
                headers={**self._headers, "Accept": "text/event-stream"},
                timeout=self._timeout,
            ) as response:
                if response.is_error:
                    await response.aread()
                    raise self._error(response, voice_scoped=True)
                # With word timings each chunk waits for the ``timestamps`` event that
                # follows it (or the next event), so its words travel with it.
                held: PcmAudio | None = None
                async for line in response.aiter_lines():
                    event = decoder.feed(line)
                    words = event_words(event) if timed else []
                    if words and held is not None:
                        held = PcmAudio(held.pcm16, rate, held.words + tuple(words))
                        continue
                    audio = interpret_event(event, provider=self.name)
                    if held is not None and (audio is None or audio):
                        yield held
                        held = None
                    if audio is None:
                        return
                    pcm = aligner.feed(audio)
                    if pcm and timed:
                        held = PcmAudio(pcm16=pcm, sample_rate=rate)
                    elif pcm:
                        yield PcmAudio(pcm16=pcm, sample_rate=rate)
                if held is not None:
                    yield held
                # Servers may omit the blank line after the last event.
                if interpret_event(decoder.flush(), provider=self.name) is None:
                    return
        # The connection closed without a ``done`` event: the audio is incomplete.
        raise Transient(f"{what}: stream ended before its done event", provider=self.name)

    def check_options(self, options: SpeechOptions) -> None:
        check_against(options, OPTION_RULES)
        if set_options(options) and not self._model_id.startswith(GENERATION_CONFIG_MODELS):
            # Earlier models ignore generation_config: refuse rather than pretend.
            raise InvalidArgument(
                "options",
                f"speed, volume and emotion need a sonic-3 model; this account uses "
                f"{self._model_id}",
            )

    def open_live(self, request: LiveRequest) -> LiveSession:
        """A ``/tts/websocket`` session on one context (``cartesia_live``), already
        connecting (a failure to connect is raised by its first ``say``)."""
        fmt = output_format(request.sample_rate_hz)
        template: dict[str, Any] = {
            "model_id": self._model_id,
            "voice": {"mode": "id", "id": request.provider_voice_id},
            "output_format": fmt,
            "language": language_code(request.language),
        }
        if config := generation_config(request.options):
            template["generation_config"] = config
        query = urlencode({"api_key": self._api_key, "cartesia_version": self._config.api_version})

        def refused(status: int, body: bytes, retry_after: float | None) -> ProviderError:
            return classify_error(
                status, body, provider=self.name, retry_after=retry_after, voice_scoped=True
            )

        def stream_error(event: Mapping[str, Any]) -> ProviderError:
            return classify_stream_error(event, provider=self.name)

        session = cartesia_live.CartesiaLiveSession(
            provider=self.name,
            url=f"{live_ws.http_to_ws(self._base_url)}/tts/websocket?{query}",
            template=template,
            sample_rate=fmt["sample_rate"],
            word_timings=request.options.word_timings,
            classify=refused,
            stream_error=stream_error,
            limits=live_ws.LiveLimits(
                connect_timeout_s=self._config.timeout_s, idle_timeout_s=self._config.timeout_s
            ),
        )
        session.preconnect()  # the handshake overlaps the first sentence's writing
        return session

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    # -- plumbing -----------------------------------------------------------------------

    def _tts_payload(self, request: SynthesisRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model_id": self._model_id,
            "transcript": request.text,
            "voice": {"mode": "id", "id": request.provider_voice_id},
            "output_format": output_format(request.sample_rate_hz),
            "language": language_code(request.language),
        }
        if config := generation_config(request.options):
            payload["generation_config"] = config
        return payload

    async def _pages(
        self, params: Mapping[str, str], *, what: str
    ) -> AsyncIterator[Mapping[str, Any]]:
        """Every voice the account owns, over every ``GET /voices`` page."""
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            query = {**params, "limit": str(PAGE_SIZE), "is_owner": "true"}
            if cursor:
                query["starting_after"] = cursor
            response = await self._send("GET", "/voices", what=what, params=query)
            body = self._json(response, what=what)
            if not isinstance(body, dict):
                raise Fatal(f"{what}: voice list is not an object", provider=self.name)
            data = body.get("data") or []
            for voice in data:
                yield voice
            if not body.get("has_more") or not data:
                return
            cursor = body.get("next_page") or str(data[-1].get("id") or "")
            if not cursor or cursor in seen:  # a server bug must not become an endless loop
                raise Fatal(f"{what}: pagination cursor does not advance", provider=self.name)
            seen.add(cursor)

    def _error(self, response: httpx.Response, *, voice_scoped: bool) -> ProviderError:
        return classify_error(
            response.status_code,
            response.content,
            provider=self.name,
            retry_after=http.parse_retry_after(response.headers.get("retry-after")),
            voice_scoped=voice_scoped,
        )

    def _json(self, response: httpx.Response, *, what: str) -> Any:
        body = http.json_or_none(response.content)
        if body is None:
            raise Fatal(f"{what}: response is not JSON", provider=self.name)
        return body
