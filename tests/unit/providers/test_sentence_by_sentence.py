"""The generic live session (``voiceslot.providers.live.SentenceBySentence``): one
``synthesize_stream`` call per piece, in order, while more is still being said; word
times moved to the session's clock; closing stops the call in progress."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from voiceslot import errors
from voiceslot.providers.base import (
    LiveInputProvider,
    LiveRequest,
    PcmAudio,
    SpeechOptions,
    SynthesisRequest,
    WordTime,
)
from voiceslot.providers.live import SentenceBySentence, open_live

RATE = 1000


class FakeEngine:
    """Two chunks of 0.5 s per text, the text's first word timed at the start of the
    second chunk; ``gate`` holds the second chunk back while cleared."""

    name = kind = "fake"

    def __init__(self, *, silent: str = "") -> None:
        self.requests: list[SynthesisRequest] = []
        self.closed: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.silent = silent

    async def synthesize_stream(self, request: SynthesisRequest) -> AsyncIterator[PcmAudio]:
        self.requests.append(request)
        try:
            if request.text == self.silent:
                return
            yield PcmAudio(b"\1\0" * (RATE // 2), RATE)
            await self.gate.wait()
            word = WordTime(request.text.split()[0], 0.5, 0.75)
            yield PcmAudio(b"\2\0" * (RATE // 2), RATE, words=(word,))
        finally:
            self.closed.append(request.text)


REQUEST = LiveRequest("pv_1", language="de", sample_rate_hz=16000, options=SpeechOptions(speed=1.1))


async def test_pieces_are_spoken_in_order_with_word_times_on_the_sessions_clock() -> None:
    engine = FakeEngine()
    session = open_live(engine, REQUEST)  # type: ignore[arg-type]
    assert isinstance(session, SentenceBySentence)
    assert await session.say("One two.") == 0
    heard = []

    async def listen() -> None:
        async for audio in session.audio():
            heard.append(audio)

    listener = asyncio.create_task(listen())
    assert await session.say("Three four.") == 1
    await session.end()
    await asyncio.wait_for(listener, 10)
    assert [a.sentence for a in heard] == [0, 0, 1, 1]
    assert [w for a in heard for w in a.pcm.words] == [
        WordTime("One", 0.5, 0.75),
        WordTime("Three", 1.5, 1.75),  # after the first piece's second of audio
    ]
    assert [r.text for r in engine.requests] == ["One two.", "Three four."]
    first = engine.requests[0]
    assert (first.provider_voice_id, first.language, first.sample_rate_hz) == ("pv_1", "de", 16000)
    assert first.options == REQUEST.options


async def test_closing_stops_the_call_in_progress_and_speaks_nothing_more() -> None:
    engine = FakeEngine()
    engine.gate.clear()
    session = SentenceBySentence(engine, REQUEST)  # type: ignore[arg-type]
    await session.say("One two.")
    await session.say("Never spoken.")
    audio = session.audio()
    first = await anext(audio)
    assert first.sentence == 0
    await session.aclose()
    await audio.aclose()  # the consumer stops iterating (a barge-in)
    assert engine.closed == ["One two."]
    assert [r.text for r in engine.requests] == ["One two."]
    assert await session.say("After close.") == 2  # accepted, never spoken
    await session.aclose()  # twice is fine


async def test_a_piece_without_audio_is_an_engine_failure() -> None:
    session = SentenceBySentence(FakeEngine(silent="Mute."), REQUEST)  # type: ignore[arg-type]
    await session.say("Mute.")
    await session.end()
    with pytest.raises(errors.Unavailable, match="no audio for sentence 0"):
        async for _ in session.audio():
            pass


def test_an_engine_with_its_own_live_api_is_used_as_is() -> None:
    class Live(FakeEngine):
        def open_live(self, request: LiveRequest) -> str:
            return "own session"

    engine = Live()
    assert isinstance(engine, LiveInputProvider)
    assert open_live(engine, REQUEST) == "own session"  # type: ignore[arg-type, comparison-overlap]
