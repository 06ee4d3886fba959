"""ElevenLabs adapter: instant voice cloning and text-to-speech over the REST API.

One instance is one ElevenLabs account (``ProviderConfig`` with ``kind="elevenlabs"``).

- Clone: ``POST /v1/voices/add`` (multipart). The voice's name is our deterministic label
  and its ``labels`` carry ``{"voiceslot_label": label}``, so a clone whose answer was lost
  can be found again (``find_by_label``) and adopted instead of cloned twice. A clone is
  never retried here: the official SDKs retry POSTs without an idempotency key and create
  duplicates; the caller looks the voice up first.
- Look-up and listing: ``GET /v2/voices`` over every page (``next_page_token``).
- Slots: ``GET /v1/user/subscription`` (``voice_limit``, ``voice_slots_used`` and the
  monthly add/edit budget, which deleting voices does not restore).
- Speech: ``POST /v1/text-to-speech/{id}`` and ``/stream`` with ``output_format=pcm_<rate>``,
  which is raw 16-bit little-endian mono PCM: exactly ``base.PcmAudio``.

Errors (``{"detail": {"status", "message"}}``, FastAPI 422 lists, plain text from proxies)
become the ``errors`` taxonomy in ``classify_error``, a pure function.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from voiceslot.config import ProviderConfig
from voiceslot.providers import elevenlabs_live, http, live_ws, timestamps
from voiceslot.providers.base import (
    Capacity,
    CloneRequest,
    LiveRequest,
    LiveSession,
    PcmAudio,
    RemoteVoice,
    SpeechOptions,
    SynthesisRequest,
)
from voiceslot.providers.errors import (
    AddEditBudgetSpent,
    CapacityFull,
    Fatal,
    InvalidInput,
    ProviderError,
    VoiceNotFound,
)
from voiceslot.providers.options import OptionRules, check_against

DEFAULT_BASE_URL = "https://api.elevenlabs.io"
DEFAULT_MODEL_ID = "eleven_multilingual_v2"
LABEL_KEY = "voiceslot_label"
"""Key of our label inside the voice's ``labels`` dict."""
PCM_RATES = (16000, 22050, 24000, 44100)
DEFAULT_PCM_RATE = 24000
PAGE_SIZE = 100
"""``/v2/voices`` maximum page size."""
_CUSTOM_CATEGORIES = frozenset({"cloned", "generated", "professional"})

# Characters per request by model family (providers/README.md). Checked before sending so
# an over-long text is InvalidInput without spending a request.
_CHARACTER_CAPS = (("eleven_v3", 3_000), ("_v2_5", 40_000), ("flash", 40_000), ("turbo", 40_000))
_DEFAULT_CHARACTER_CAP = 10_000
# Only these model families accept ``language_code``; the others reject the field.
_LANGUAGE_CODE_MODELS = ("_v2_5", "eleven_v3", "flash", "turbo")


def character_cap(model_id: str) -> int:
    """Longest text one request may carry for ``model_id``."""
    for marker, cap in _CHARACTER_CAPS:
        if marker in model_id:
            return cap
    return _DEFAULT_CHARACTER_CAP


def supports_language_code(model_id: str) -> bool:
    return any(marker in model_id for marker in _LANGUAGE_CODE_MODELS)


OPTION_RULES = OptionRules(
    "ElevenLabs",
    ranges={
        "speed": (0.7, 1.2),
        "stability": (0.0, 1.0),
        "similarity_boost": (0.0, 1.0),
        "style": (0.0, 1.0),
    },
    flags=frozenset({"use_speaker_boost"}),
)
"""What ``voice_settings`` takes (the API's own ranges; it answers 422 outside them)."""
_VOICE_SETTINGS = ("stability", "similarity_boost", "style", "use_speaker_boost", "speed")


def voice_settings(opts: SpeechOptions) -> dict[str, Any]:
    """The request's ``voice_settings``: only what the caller set, so the voice's stored
    settings stay in force for the rest."""
    return {
        name: getattr(opts, name) for name in _VOICE_SETTINGS if getattr(opts, name) is not None
    }


def output_format_for(sample_rate_hz: int) -> tuple[str, int]:
    """The ``output_format`` query value and the rate it yields for a requested rate."""
    rate = http.nearest_rate(sample_rate_hz, PCM_RATES, default=DEFAULT_PCM_RATE)
    return f"pcm_{rate}", rate


def label_of(voice: Mapping[str, Any]) -> str | None:
    """Our label on a ``VoiceResponseModel``, or None for voices we did not create."""
    labels = voice.get("labels") or {}
    label = labels.get(LABEL_KEY) if isinstance(labels, Mapping) else None
    return label if isinstance(label, str) and label else None


def to_remote_voice(voice: Mapping[str, Any]) -> RemoteVoice:
    return RemoteVoice(
        provider_voice_id=str(voice["voice_id"]),
        label=label_of(voice),
        name=str(voice.get("name") or ""),
    )


def matches_label(voice: Mapping[str, Any], label: str) -> bool:
    """Exact match on the label or the name: ``search`` is a substring search, so
    ``vs-a-g1`` also finds ``vs-a-g10``."""
    return label_of(voice) == label or voice.get("name") == label


def is_custom(voice: Mapping[str, Any]) -> bool:
    return voice.get("category") in _CUSTOM_CATEGORIES


def capacity_from_subscription(
    subscription: Mapping[str, Any], *, configured_limit: int | None
) -> Capacity:
    """Slots from ``/v1/user/subscription``; a configured capacity can only lower the
    provider's limit, never raise it."""
    limit = subscription.get("voice_limit")
    if configured_limit is not None:
        limit = configured_limit if limit is None else min(int(limit), configured_limit)
    max_edits = subscription.get("max_voice_add_edits")
    counter = subscription.get("voice_add_edit_counter") or 0
    remaining = None if max_edits is None else max(0, int(max_edits) - int(counter))
    used = subscription.get("voice_slots_used")
    return Capacity(
        limit=None if limit is None else int(limit),
        used=None if used is None else int(used),
        add_edit_remaining=remaining,
    )


def parse_error_body(body: bytes) -> tuple[str, str]:
    """(code, message) from an error body: ``{"detail": {"status"|"code", "message"}}``,
    a FastAPI 422 list, ``{"detail": "..."}`` or plain text. The code may be ""."""
    data = http.json_or_none(body)
    detail = data.get("detail") if isinstance(data, dict) else None
    if isinstance(detail, dict):
        code = str(detail.get("status") or detail.get("code") or "")
        message = str(detail.get("message") or code or http.body_text(body))
        return code, message
    if isinstance(detail, list):
        parts = [
            f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg', '')}"
            if isinstance(item, dict)
            else str(item)
            for item in detail
        ]
        return "validation_error", "; ".join(parts) or "validation error"
    if isinstance(detail, str):
        return "", detail
    return "", http.body_text(body) or "(empty body)"


def classify_error(
    status: int,
    body: bytes,
    *,
    provider: str,
    retry_after: float | None = None,
    request_id: str | None = None,
    voice_scoped: bool = False,
) -> ProviderError:
    """One error of the taxonomy for an ElevenLabs error response (providers/README.md)."""
    code, message = parse_error_body(body)
    text = f"{code}: {message}" if code and code not in message else message
    if request_id:
        text = f"{text} (request-id {request_id})"
    kwargs: dict[str, Any] = {
        "provider": provider,
        "status_code": status,
        "retry_after": retry_after,
    }
    if code == "voice_limit_reached":
        return CapacityFull(text, **kwargs)
    if code == "voice_add_edit_limit_reached":
        return AddEditBudgetSpent(text, **kwargs)
    if "cannot upload the same file twice" in message.lower():
        return InvalidInput(text, **kwargs)
    # The rest follows the status: 401 (invalid_api_key, quota_exceeded) and 403
    # (can_not_use_instant_voice_cloning) → AuthError, 404 → VoiceNotFound, 429
    # (too_many_concurrent_requests, system_busy) → RateLimited, 5xx → Transient.
    return http.error_for_status(
        status,
        text,
        provider=provider,
        retry_after=retry_after,
        voice_scoped=voice_scoped,
    )


class ElevenLabsProvider(http.HttpAdapter):
    """An ElevenLabs account behind ``base.Provider``."""

    kind = "elevenlabs"

    def __init__(self, config: ProviderConfig, *, client: httpx.AsyncClient | None = None) -> None:
        if config.kind != self.kind:
            raise ValueError(f"provider {config.name!r} is {config.kind!r}, not {self.kind!r}")
        if config.api_key is None:
            raise ValueError(f"provider {config.name!r} needs an api_key")
        self.name = config.name
        self._config = config
        self._base_url = (config.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._headers = {"xi-api-key": config.api_key.get_secret_value()}
        self._model_id = config.model_id or DEFAULT_MODEL_ID
        self._timeout = http.request_timeout(config.timeout_s)
        self._owns_client = client is None
        self._client = client or http.build_client(timeout_s=config.timeout_s)

    # -- voices -------------------------------------------------------------------------

    async def clone(self, request: CloneRequest) -> RemoteVoice:
        data = {
            "name": request.label,
            "labels": json.dumps({LABEL_KEY: request.label}),
            "remove_background_noise": "false",
        }
        if request.description:
            data["description"] = request.description
        files = [
            (
                "files",
                (
                    request.sample_filename,
                    request.sample,
                    http.sample_content_type(request.sample_filename),
                ),
            )
        ]
        # Sent exactly once: on Transient the caller looks the label up before cloning again.
        response = await self._send("POST", "/v1/voices/add", what="clone", data=data, files=files)
        body = self._json(response, what="clone")
        voice_id = body.get("voice_id") if isinstance(body, dict) else None
        if not isinstance(voice_id, str) or not voice_id:
            raise Fatal("clone: response has no voice_id", provider=self.name)
        return RemoteVoice(provider_voice_id=voice_id, label=request.label, name=request.label)

    async def find_by_label(self, label: str) -> RemoteVoice | None:
        params = {"search": label, "category": "cloned"}
        async for voice in self._pages(params, what="find_by_label"):
            if matches_label(voice, label):
                return to_remote_voice(voice)
        return None

    async def list_voices(self, *, label_prefix: str = "") -> AsyncIterator[RemoteVoice]:
        # No server-side ``search`` here: it is a fuzzy search whose exact semantics are
        # not documented, and reconciliation must see every voice or it leaks slots.
        async for voice in self._pages({"voice_type": "personal"}, what="list_voices"):
            if not is_custom(voice):
                continue
            remote = to_remote_voice(voice)
            if label_prefix and not (remote.label or "").startswith(label_prefix):
                continue
            yield remote

    async def exists(self, provider_voice_id: str) -> bool:
        try:
            await self._send(
                "GET",
                f"/v1/voices/{quote(provider_voice_id, safe='')}",
                what="get",
                voice_scoped=True,
            )
        except VoiceNotFound:
            return False
        return True

    async def delete(self, provider_voice_id: str) -> None:
        await self._send(
            "DELETE",
            f"/v1/voices/{quote(provider_voice_id, safe='')}",
            what="delete",
            voice_scoped=True,
        )

    async def capacity(self) -> Capacity:
        response = await self._send("GET", "/v1/user/subscription", what="capacity")
        body = self._json(response, what="capacity")
        if not isinstance(body, dict):
            raise Fatal("capacity: subscription is not an object", provider=self.name)
        return capacity_from_subscription(body, configured_limit=self._config.capacity)

    # -- speech -------------------------------------------------------------------------

    async def synthesize(self, request: SynthesisRequest) -> PcmAudio:
        path, params, payload, rate = self._tts_call(request, stream=False)
        response = await self._send(
            "POST", path, what="synthesize", params=params, json=payload, voice_scoped=True
        )
        pcm = response.content
        # A well-formed answer is whole samples; drop a stray odd byte rather than shift.
        return PcmAudio(pcm16=pcm[: len(pcm) - len(pcm) % 2], sample_rate=rate)

    async def synthesize_stream(self, request: SynthesisRequest) -> AsyncIterator[PcmAudio]:
        path, params, payload, rate = self._tts_call(request, stream=True)
        # With word timings: ``/stream/with-timestamps``, JSON lines of base64 audio and
        # character alignment, decoded into audio with the words each piece completes.
        decoder = None
        if request.options.word_timings:
            path += "/with-timestamps"
            decoder = timestamps.ElevenLabsTimedStream(
                request.text, sample_rate=rate, provider=self.name
            )
        aligner = http.SampleAligner()
        what = "synthesize_stream"
        with http.transport_errors(self.name, what):
            async with self._client.stream(
                "POST",
                self._base_url + path,
                params=params,
                json=payload,
                headers=self._headers,
                timeout=self._timeout,
            ) as response:
                if response.is_error:
                    await response.aread()
                    raise self._error(response, voice_scoped=True)
                if decoder is None:
                    async for data in response.aiter_bytes():
                        pcm = aligner.feed(data)
                        if pcm:
                            yield PcmAudio(pcm16=pcm, sample_rate=rate)
                    return
                async for line in response.aiter_lines():
                    body = http.json_or_none(line.encode()) if line.strip() else None
                    if not isinstance(body, dict):
                        continue
                    raw, words = decoder.feed(body)
                    pcm = aligner.feed(raw)
                    if pcm or words:
                        yield PcmAudio(pcm16=pcm, sample_rate=rate, words=tuple(words))

    def check_options(self, options: SpeechOptions) -> None:
        check_against(options, OPTION_RULES)

    def open_live(self, request: LiveRequest) -> LiveSession:
        """A ``stream-input`` WebSocket session (``elevenlabs_live``), already connecting
        (a failure to connect is raised by its first ``say``)."""
        output_format, rate = output_format_for(request.sample_rate_hz)
        language = None
        if supports_language_code(self._model_id) and request.language:
            language = request.language.split("-")[0].lower()
        url = elevenlabs_live.live_url(
            live_ws.http_to_ws(self._base_url),
            request.provider_voice_id,
            model_id=self._model_id,
            output_format=output_format,
            language=language,
        )

        def refused(status: int, body: bytes, retry_after: float | None) -> ProviderError:
            return classify_error(
                status, body, provider=self.name, retry_after=retry_after, voice_scoped=True
            )

        session = elevenlabs_live.ElevenLabsLiveSession(
            provider=self.name,
            url=url,
            api_key=self._headers["xi-api-key"],
            sample_rate=rate,
            voice_settings=voice_settings(request.options),
            word_timings=request.options.word_timings,
            classify=refused,
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

    def _tts_call(
        self, request: SynthesisRequest, *, stream: bool
    ) -> tuple[str, dict[str, str], dict[str, Any], int]:
        cap = character_cap(self._model_id)
        if len(request.text) > cap:
            raise InvalidInput(
                f"text has {len(request.text)} characters; {self._model_id} takes {cap}",
                provider=self.name,
            )
        output_format, rate = output_format_for(request.sample_rate_hz)
        payload: dict[str, Any] = {"text": request.text, "model_id": self._model_id}
        if request.seed is not None:
            payload["seed"] = request.seed
        if settings := voice_settings(request.options):
            payload["voice_settings"] = settings
        if supports_language_code(self._model_id) and request.language:
            payload["language_code"] = request.language.split("-")[0].lower()
        path = f"/v1/text-to-speech/{quote(request.provider_voice_id, safe='')}"
        if stream:
            path += "/stream"
        return path, {"output_format": output_format}, payload, rate

    async def _pages(
        self, params: Mapping[str, str], *, what: str
    ) -> AsyncIterator[Mapping[str, Any]]:
        """Every voice over every ``/v2/voices`` page."""
        token: str | None = None
        seen_tokens: set[str] = set()
        while True:
            query = {**params, "page_size": str(PAGE_SIZE), "include_total_count": "false"}
            if token:
                query["next_page_token"] = token
            response = await self._send("GET", "/v2/voices", what=what, params=query)
            body = self._json(response, what=what)
            if not isinstance(body, dict):
                raise Fatal(f"{what}: voice list is not an object", provider=self.name)
            for voice in body.get("voices") or []:
                yield voice
            token = body.get("next_page_token")
            if not body.get("has_more") or not token:
                return
            if token in seen_tokens:  # a server bug must not become an endless loop
                raise Fatal(f"{what}: pagination repeats token {token!r}", provider=self.name)
            seen_tokens.add(token)

    def _error(self, response: httpx.Response, *, voice_scoped: bool) -> ProviderError:
        return classify_error(
            response.status_code,
            response.content,
            provider=self.name,
            retry_after=http.parse_retry_after(response.headers.get("retry-after")),
            request_id=response.headers.get("request-id"),
            voice_scoped=voice_scoped,
        )

    def _json(self, response: httpx.Response, *, what: str) -> Any:
        body = http.json_or_none(response.content)
        if body is None:
            raise Fatal(f"{what}: response is not JSON", provider=self.name)
        return body
