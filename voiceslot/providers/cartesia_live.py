"""Cartesia streaming input: a live session over ``/tts/websocket`` with one context.

``wss://…/tts/websocket?api_key&cartesia_version``. Every ``say`` sends the sentence on the
session's context with ``continue: true`` (inputs are concatenated verbatim, so each
carries its trailing space) and then an empty input with ``flush: true``;
``max_buffer_delay_ms`` is 0 because the caller hands over complete sentences. ``end``
sends ``continue: false`` (also when all audio was heard, so the context ends as finished)
and the server answers ``done`` after the last audio, or ``context_closed`` when the
context had expired with nothing owed; ``aclose`` of an unfinished session sends
``cancel: true`` for the context, then closes the socket.

Attribution: flushes are answered in order, each ``flush_done`` after all audio of what
came before it, so the audio up to the first ``flush_done`` speaks the first sentence, and
so on: a queue of sentences awaiting their ``flush_done``. This holds whatever the server
puts in a chunk's ``flush_id``, whose numbering the documentation leaves open.

Expiry: a context ends 1 s after its last audio when nothing more arrives. A session whose
audio is all delivered and which has been quiet for ``ROTATE_AFTER_S`` speaks its next
sentence on a fresh context (prosody starts over, but nothing is lost); if the server
answers ``context_closed`` anyway (a race with the expiry), the sentences still owed are
said again on a fresh context, which is safe because an expired context had no audio
left to send.

Word timings (``add_timestamps``): ``timestamps`` frames follow the chunk whose audio they
time, in seconds from the start of the context; the session shifts them to the start of
the session and hands them out with that chunk (held back until its timestamps or the next
frame arrive).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from voiceslot.providers import http
from voiceslot.providers.base import LiveAudio, PcmAudio, WordTime
from voiceslot.providers.errors import Fatal, ProviderError
from voiceslot.providers.live_ws import HandshakeClassifier, LiveLimits, WsLiveSession
from voiceslot.providers.timestamps import cartesia_words

ROTATE_AFTER_S = 0.5
"""Quiet time after which the next sentence goes to a fresh context (expiry is at 1 s)."""
CONTEXT_CLOSED = "context_closed"


class CartesiaLiveSession(WsLiveSession):
    """``base.LiveSession`` over Cartesia's WebSocket, one context per session (a new one
    only after an idle spell, see the module docstring)."""

    def __init__(
        self,
        *,
        provider: str,
        url: str,
        template: dict[str, Any],
        sample_rate: int,
        word_timings: bool,
        classify: HandshakeClassifier,
        stream_error: Callable[[Mapping[str, Any]], ProviderError],
        limits: LiveLimits | None = None,
    ) -> None:
        super().__init__(
            provider=provider, url=url, headers={}, classify=classify, limits=limits or LiveLimits()
        )
        self._template = {**template, "add_timestamps": word_timings, "max_buffer_delay_ms": 0}
        self._rate = sample_rate
        self._word_timings = word_timings
        self._stream_error = stream_error
        self._aligner = http.SampleAligner()
        self._context = uuid.uuid4().hex
        self._owed_sentences: deque[tuple[int, str]] = deque()
        self._last_index = 0
        self._audio_s = 0.0
        self._origin_s = 0.0
        self._quiet_since: float | None = None
        self._context_used = False
        self._done_owed = False
        self._held: LiveAudio | None = None
        self._early_words: tuple[WordTime, ...] = ()
        self._send_lock = asyncio.Lock()

    async def _on_open(self) -> None:
        return None

    def _request(self, transcript: str, **flags: Any) -> dict[str, Any]:
        return {**self._template, "context_id": self._context, "transcript": transcript, **flags}

    def _rotate(self) -> None:
        self._context = uuid.uuid4().hex
        self._origin_s = self._audio_s
        self._context_used = False

    async def _send_sentence(self, index: int, text: str) -> None:
        async with self._send_lock:
            quiet = self._quiet_since
            if (
                self._context_used
                and quiet is not None
                and time.monotonic() - quiet > ROTATE_AFTER_S
            ):
                self._rotate()
            self._owed_sentences.append((index, text))
            self._quiet_since = None
            await self._say_on_context(text)

    async def _say_on_context(self, text: str) -> None:
        self._context_used = True
        await self._send_json(self._request(text.strip() + " ", **{"continue": True}))
        await self._send_json(self._request("", **{"continue": True, "flush": True}))

    async def _send_end(self) -> bool:
        if not self._context_used:
            return False  # nothing was said on this context: there is nothing to end
        # Also when everything was heard: the context then ends at once, as finished, and
        # is not left to expire or to be cancelled by ``aclose`` (its ``done``, or the
        # ``context_closed`` of one that expired meanwhile, ends the session).
        async with self._send_lock:
            self._done_owed = True
            await self._send_json(self._request("", **{"continue": False}))
        return True

    async def _send_cancel(self) -> None:
        await self._send_json({"context_id": self._context, "cancel": True})

    def _owed(self) -> bool:
        return bool(self._owed_sentences) or self._done_owed

    async def _on_message(self, message: dict[str, Any]) -> tuple[list[LiveAudio], bool]:
        if message.get("context_id") not in (None, self._context):
            return [], False  # a context this session left behind
        kind = message.get("type")
        out: list[LiveAudio] = []
        if kind == "timestamps":
            words = tuple(cartesia_words(message, origin_s=self._origin_s))
            held = self._held
            if held is None:  # no audio to go with: they travel with the next piece
                self._early_words += words
            else:
                pcm = held.pcm
                self._held = LiveAudio(
                    PcmAudio(pcm.pcm16, pcm.sample_rate, pcm.words + words), held.sentence
                )
            return [], False
        self._release(out)
        if kind == "chunk":
            self._chunk(message, out)
        elif kind == "flush_done":
            if self._owed_sentences:
                self._last_index = self._owed_sentences.popleft()[0]
            if not self._owed_sentences:
                self._quiet_since = time.monotonic()
        elif kind == "done":
            self._done_owed = False
            return out, self._ended
        elif kind == "error":
            return out, await self._error(message)
        return out, False

    def _release(self, out: list[LiveAudio]) -> None:
        if self._held is not None:
            out.append(self._held)
            self._held = None

    def _chunk(self, message: Mapping[str, Any], out: list[LiveAudio]) -> None:
        try:
            raw = base64.b64decode(str(message.get("data") or ""), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Fatal(f"chunk is not base64: {exc}", provider=self.provider) from exc
        pcm = self._aligner.feed(raw)
        self._audio_s += len(raw) / 2 / self._rate
        if not pcm:
            return
        sentence = self._owed_sentences[0][0] if self._owed_sentences else self._last_index
        piece = LiveAudio(PcmAudio(pcm, self._rate, self._early_words), sentence)
        self._early_words = ()
        if self._word_timings:
            self._held = piece  # its timestamps follow
        else:
            out.append(piece)

    async def _error(self, message: Mapping[str, Any]) -> bool:
        """Raise the error, or recover from an expired context; True when that ends the
        session."""
        if message.get("error_code") != CONTEXT_CLOSED:
            error: ProviderError = self._stream_error(message)
            raise error
        if not self._owed_sentences:
            # Everything said was heard: an ``end`` that reached an expired context is met.
            ended, self._done_owed = self._done_owed, False
            return ended
        # The context expired before our input reached it, so none of it was spoken: say
        # it all again, in order, on a fresh context (see the module docstring). Errors
        # for the old context that follow are ignored (another context id).
        async with self._send_lock:
            self._rotate()
            for _, text in self._owed_sentences:
                await self._say_on_context(text)
            if self._done_owed:
                await self._send_json(self._request("", **{"continue": False}))
        return False
