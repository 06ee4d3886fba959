"""A live session for any provider, sentence by sentence: the ``LiveSession`` port over
``Provider.synthesize_stream``.

Providers with a streaming-input API of their own (``LiveInputProvider``: ElevenLabs'
stream-input, Cartesia's contexts) keep prosody across sentences; every other engine (the
local one) is spoken to through this adapter, one ``synthesize_stream`` call per piece of
text, in the order said, while more text is still being said. Word times each call
reports from its own start are moved to the session's audio clock (the samples produced
before it), which is what the port promises.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

from voiceslot import errors
from voiceslot.providers.base import (
    LiveAudio,
    LiveInputProvider,
    LiveRequest,
    LiveSession,
    PcmAudio,
    Provider,
    SynthesisRequest,
    WordTime,
)

_END = object()  # ``end()`` was called: no more text after what is queued


def open_live(provider: Provider, request: LiveRequest) -> LiveSession:
    """The provider's own live session where it has one, else ``SentenceBySentence``."""
    if isinstance(provider, LiveInputProvider):
        return provider.open_live(request)
    return SentenceBySentence(provider, request)


def shifted(words: tuple[WordTime, ...], by_s: float) -> tuple[WordTime, ...]:
    """``words`` with their times moved ``by_s`` seconds later."""
    if not by_s:
        return words
    return tuple(WordTime(w.word, w.start_s + by_s, w.end_s + by_s) for w in words)


class SentenceBySentence:
    """``LiveSession`` over ``synthesize_stream``: each ``say`` is one call, made once the
    previous one's audio is all out. Closing stops the call in progress (its HTTP stream
    or the engine's generator is closed with the iteration) and any not started."""

    def __init__(self, provider: Provider, request: LiveRequest) -> None:
        self._provider = provider
        self._request = request
        self._queue: asyncio.Queue[str | object] = asyncio.Queue()
        self._said = 0
        self._ended = False
        self._closed = False

    async def say(self, text: str) -> int:
        if self._ended:
            raise RuntimeError("say() after end()")
        index = self._said
        self._said += 1
        if not self._closed:  # after aclose() nothing more is spoken
            self._queue.put_nowait(text)
        return index

    async def end(self) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(_END)

    async def aclose(self) -> None:
        self._closed = True
        self._queue.put_nowait(_END)  # wakes audio() waiting for text

    async def audio(self) -> AsyncIterator[LiveAudio]:
        samples = 0  # the session's audio so far, for word times
        index = 0
        while not self._closed:
            text = await self._queue.get()
            if text is _END or self._closed:
                return
            assert isinstance(text, str)
            produced = False
            stream = self._provider.synthesize_stream(
                SynthesisRequest(
                    self._request.provider_voice_id,
                    text,
                    language=self._request.language,
                    sample_rate_hz=self._request.sample_rate_hz,
                    options=self._request.options,
                )
            )
            try:
                offset_s: float | None = None
                async for pcm in stream:
                    if self._closed:
                        return
                    if not pcm.pcm16:
                        continue
                    if offset_s is None:
                        offset_s = samples / pcm.sample_rate
                    produced = True
                    samples += len(pcm.pcm16) // 2
                    yield LiveAudio(_with_words(pcm, shifted(pcm.words, offset_s)), index)
            finally:
                # Closes the provider's stream now (an HTTP response, a generator), also
                # when the consumer stops iterating us (barge-in).
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
            if not produced:
                raise errors.Unavailable(f"the engine returned no audio for sentence {index}")
            index += 1


def _with_words(pcm: PcmAudio, words: tuple[WordTime, ...]) -> PcmAudio:
    return pcm if words is pcm.words else replace(pcm, words=words)
