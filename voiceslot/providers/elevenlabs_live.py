"""ElevenLabs streaming input: a live session over the ``stream-input`` WebSocket.

``wss://…/v1/text-to-speech/{voice_id}/stream-input?model_id&output_format=pcm_<rate>
&inactivity_timeout`` with the ``xi-api-key`` header. The first message is ``{"text": " "}``
(plus ``voice_settings`` when the request sets any); each ``say`` sends the sentence
followed by a space with ``flush: true``, so its audio is generated at once instead of
waiting for the chunk schedule, while the model keeps the context of what came before;
``end`` sends ``{"text": ""}`` and the server answers ``{"isFinal": true}`` after the last
audio. ``aclose`` closes the socket: ElevenLabs stops generating for a closed socket.

Attribution: each audio frame carries an ``alignment`` of the characters it speaks. Every
sentence is flushed on its own, so a frame never speaks two sentences; frames belong to the
sentence being spoken until its characters are all accounted for. Characters are counted
without whitespace, which the service may normalise. A frame without alignment belongs to
the sentence being spoken.

Word timings: alignment times count from the start of each frame's audio (as the service
sends them), so the session adds the audio it received before the frame. A word split
across frames is completed by the next frame, and a sentence's last word ends with it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from voiceslot.providers import http
from voiceslot.providers.base import LiveAudio, PcmAudio, WordTime
from voiceslot.providers.errors import (
    AuthError,
    Fatal,
    InvalidInput,
    ProviderError,
    RateLimited,
    VoiceNotFound,
)
from voiceslot.providers.live_ws import HandshakeClassifier, LiveLimits, WsLiveSession

INACTIVITY_TIMEOUT_S = 120
"""Seconds without text before ElevenLabs closes the socket (its maximum is 180); the
synthesizer bounds the silence of a turn itself, well below this."""


def live_url(
    base_ws_url: str, voice_id: str, *, model_id: str, output_format: str, language: str | None
) -> str:
    query = {
        "model_id": model_id,
        "output_format": output_format,
        "inactivity_timeout": str(INACTIVITY_TIMEOUT_S),
    }
    if language:
        query["language_code"] = language
    path = f"/v1/text-to-speech/{quote(voice_id, safe='')}/stream-input"
    return f"{base_ws_url}{path}?{urlencode(query)}"


def classify_ws_error(message: Mapping[str, Any], *, provider: str) -> ProviderError:
    """The taxonomy error for an error frame (``{"message", "error", "code"}``)."""
    code = str(message.get("error") or message.get("code") or "")
    text = str(message.get("message") or code or "error frame")
    lowered = f"{code} {text}".lower()
    if any(w in lowered for w in ("api_key", "api key", "unauthori", "quota", "permission")):
        return AuthError(text, provider=provider, status_code=401)
    if any(w in lowered for w in ("rate", "too_many", "busy", "concurrent")):
        return RateLimited(text, provider=provider, status_code=429)
    if "voice_not_found" in lowered or "voice not found" in lowered:
        return VoiceNotFound(text, provider=provider, status_code=404)
    if any(w in lowered for w in ("invalid", "validation", "too long", "limit")):
        return InvalidInput(text, provider=provider)
    return Fatal(text, provider=provider)


def visible_length(text: str) -> int:
    """Characters that alignment accounts for whatever its whitespace handling."""
    return sum(1 for char in text if not char.isspace())


@dataclass
class Attribution:
    """Which sentence each frame speaks, and the words the frames complete. Pure state,
    fed one alignment at a time.

    A sentence stays current after its last character until a frame brings a character
    beyond it: frames of trailing silence (no characters) still belong to it."""

    lengths: list[int] = field(default_factory=list)
    """Visible characters of each sentence said, in order."""
    current: int = 0
    seen: int = 0
    """Visible characters of the current sentence accounted for."""
    _word: str = ""
    _word_start: float = 0.0
    _word_end: float = 0.0

    def add_sentence(self, text: str) -> None:
        self.lengths.append(visible_length(text))

    @property
    def complete(self) -> bool:
        """Every sentence said so far is accounted for."""
        if not self.lengths:
            return True
        # Sentences after the current one with nothing to say never bring a character.
        rest = self.lengths[self.current + 1 :]
        return self.seen >= self.lengths[self.current] and not any(rest)

    def feed(
        self,
        chars: Sequence[str],
        starts_ms: Sequence[float],
        durations_ms: Sequence[float],
        *,
        offset_s: float,
    ) -> tuple[int, list[WordTime]]:
        """Account for one frame's characters: the sentence the frame speaks (that of its
        first visible character, else the current one) and the words it completes."""
        words: list[WordTime] = []
        sentence: int | None = None
        for char, start_ms, duration_ms in zip(chars, starts_ms, durations_ms, strict=False):
            start = offset_s + float(start_ms) / 1000
            end = start + float(duration_ms) / 1000
            if char.isspace():
                words.extend(self._end_word())
                continue
            self._advance()
            if sentence is None:
                sentence = self.current
            if not self._word:
                self._word_start = start
            self._word += char
            self._word_end = max(end, self._word_start)
            self.seen += 1
            if self.current < len(self.lengths) and self.seen >= self.lengths[self.current]:
                words.extend(self._end_word())  # a sentence's last word ends with it
        return (self.current if sentence is None else sentence), words

    def _advance(self) -> None:
        """Move past finished sentences (and empty ones) before counting a character."""
        last = len(self.lengths) - 1
        while self.current < last and self.seen >= self.lengths[self.current]:
            self.current += 1
            self.seen = 0

    def _end_word(self) -> list[WordTime]:
        if not self._word:
            return []
        word = WordTime(self._word, self._word_start, self._word_end)
        self._word = ""
        return [word]


def alignment_of(message: Mapping[str, Any]) -> tuple[list[str], list[float], list[float]] | None:
    """(chars, start ms, duration ms) of a frame, from ``alignment`` (the text as sent)
    or else ``normalizedAlignment``; both spellings of the time keys (``charStartTimesMs``
    / ``charsStartTimesMs``, ``charsDurationsMs`` / ``charDurationsMs``) are in use."""
    for key in ("alignment", "normalizedAlignment"):
        value = message.get(key)
        if not isinstance(value, Mapping):
            continue
        chars = value.get("chars")
        starts = value.get("charStartTimesMs", value.get("charsStartTimesMs"))
        durations = value.get("charsDurationsMs", value.get("charDurationsMs"))
        if isinstance(chars, list) and isinstance(starts, list) and isinstance(durations, list):
            return [str(c) for c in chars], starts, durations
    return None


class ElevenLabsLiveSession(WsLiveSession):
    """``base.LiveSession`` over ElevenLabs ``stream-input``."""

    def __init__(
        self,
        *,
        provider: str,
        url: str,
        api_key: str,
        sample_rate: int,
        voice_settings: dict[str, Any],
        word_timings: bool,
        classify: HandshakeClassifier,
        limits: LiveLimits | None = None,
    ) -> None:
        super().__init__(
            provider=provider,
            url=url,
            headers={"xi-api-key": api_key},
            classify=classify,
            limits=limits or LiveLimits(),
        )
        self._rate = sample_rate
        self._voice_settings = voice_settings
        self._word_timings = word_timings
        self._aligner = http.SampleAligner()
        self._attribution = Attribution()
        self._audio_s = 0.0
        self._final_owed = False

    async def _on_open(self) -> None:
        first: dict[str, Any] = {"text": " "}
        if self._voice_settings:
            first["voice_settings"] = self._voice_settings
        await self._send_json(first)

    async def _send_sentence(self, index: int, text: str) -> None:
        self._attribution.add_sentence(text)
        await self._send_json({"text": text.strip() + " ", "flush": True})

    async def _send_end(self) -> bool:
        self._final_owed = True
        await self._send_json({"text": ""})
        return True

    async def _send_cancel(self) -> None:
        return None  # closing the socket is how ElevenLabs is told to stop

    def _owed(self) -> bool:
        return self._final_owed or not self._attribution.complete

    async def _on_message(self, message: dict[str, Any]) -> tuple[list[LiveAudio], bool]:
        if message.get("error") or (message.get("message") and "audio" not in message):
            raise classify_ws_error(message, provider=self.provider)
        pieces: list[LiveAudio] = []
        data = message.get("audio")
        if isinstance(data, str) and data:
            try:
                raw = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise Fatal(f"audio is not base64: {exc}", provider=self.provider) from exc
            aligned = alignment_of(message)
            sentence, words = self._attribution.current, []
            if aligned is not None:
                sentence, words = self._attribution.feed(*aligned, offset_s=self._audio_s)
            pcm = self._aligner.feed(raw)
            self._audio_s += len(raw) / 2 / self._rate
            if pcm or words:
                timed = tuple(words) if self._word_timings else ()
                pieces.append(LiveAudio(PcmAudio(pcm, self._rate, timed), sentence))
        return pieces, message.get("isFinal") is True
