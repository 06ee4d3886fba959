"""The live turn's ways out, with an engine and an allocator that are fakes (the real ones
over sockets are in tests/acceptance/test_live_stream.py): an error while the lease is
still being taken ends the turn at once and gives the lease up; the caller going away
mid-turn (a barge-in) closes the engine's stream and releases the lease; a turn spoken to
the end tags each chunk with its span."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from synth_svc.allocator_client import ActiveVoice
from synth_svc.domain.formats import OutputFormat
from synth_svc.domain.live import End, LiveChunk, LiveEvent, Start, Text
from synth_svc.live import speak_live
from synth_svc.service import Synthesizer
from voiceslot import errors
from voiceslot.config import LiveConfig, SynthConfig
from voiceslot.providers.base import PcmAudio, SpeechOptions, SynthesisRequest

VOICE = "v_0123456789abcdef0123456789abcdef"
START = Start(VOICE, OutputFormat("wav", 0))


class Allocator:
    """``leased`` as the synthesizer uses it; ``gate`` holds the lease back while clear."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = 0
        self.abandoned = 0

    @asynccontextmanager
    async def leased(self, voice_id: str, *, deadline: float) -> AsyncIterator[ActiveVoice]:
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.abandoned += 1
            raise
        self.held += 1
        try:
            yield ActiveVoice(voice_id, "fake", "pv_1", "en", "l_1", 60.0)
        finally:
            self.held -= 1


class Engine:
    name = kind = "fake"

    def __init__(self) -> None:
        self.open_streams = 0
        self.hold = asyncio.Event()
        self.hold.set()

    def check_options(self, options: SpeechOptions) -> None:
        pass

    async def synthesize_stream(self, request: SynthesisRequest) -> AsyncIterator[PcmAudio]:
        self.open_streams += 1
        try:
            yield PcmAudio(b"\1\0" * 160, 16000)
            await self.hold.wait()
            yield PcmAudio(b"\2\0" * 160, 16000)
        finally:
            self.open_streams -= 1


def synthesizer(engine: Engine, allocator: Allocator, **live: float) -> Synthesizer:
    return Synthesizer(
        providers={"fake": engine},  # type: ignore[dict-item]
        config=SynthConfig(live=LiveConfig(**live)),
        allocator=lambda: allocator,  # type: ignore[arg-type, return-value]
    )


async def messages(
    *events: LiveEvent, then: asyncio.Event | None = None
) -> AsyncIterator[LiveEvent]:
    for event in events:
        yield event
    if then is not None:
        await then.wait()  # the client keeps its side open


async def collect(turn: AsyncIterator[LiveChunk]) -> list[LiveChunk]:
    return [chunk async for chunk in turn]


async def test_a_bound_exceeded_while_the_lease_is_taken_ends_the_turn_at_once() -> None:
    engine, allocator = Engine(), Allocator()
    allocator.gate.clear()  # a cold voice: cloning takes long
    turn = speak_live(
        synthesizer(engine, allocator, max_fragment_chars=5),
        messages(START, Text("far too long"), then=asyncio.Event()),
        deadline=asyncio.get_running_loop().time() + 60,
    )
    with pytest.raises(errors.InvalidArgument, match=r"synth\.live\.max_fragment_chars"):
        await asyncio.wait_for(collect(turn), 30)
    assert allocator.abandoned == 1 and allocator.held == 0


async def test_the_caller_going_away_mid_turn_closes_the_engine_and_the_lease() -> None:
    engine, allocator = Engine(), Allocator()
    engine.hold.clear()  # the engine is mid-sentence
    turn = speak_live(
        synthesizer(engine, allocator),
        messages(START, Text("One sentence. And"), then=asyncio.Event()),
        deadline=asyncio.get_running_loop().time() + 60,
    )
    first = await asyncio.wait_for(anext(turn), 30)
    assert first.span.text == "One sentence."
    assert allocator.held == 1 and engine.open_streams == 1
    await turn.aclose()  # what gRPC does to the handler when the client cancels
    assert allocator.held == 0 and engine.open_streams == 0


async def test_a_turn_spoken_to_the_end_tags_every_chunk_with_its_span() -> None:
    engine, allocator = Engine(), Allocator()
    chunks = await asyncio.wait_for(
        collect(
            speak_live(
                synthesizer(engine, allocator),
                messages(START, Text("First one. "), Text("Second"), Text(" one!"), End()),
                deadline=asyncio.get_running_loop().time() + 60,
            )
        ),
        30,
    )
    assert [c.sequence for c in chunks] == list(range(len(chunks)))
    assert [(c.span.start, c.span.end, c.span.text) for c in chunks[:4]] == [
        (0, 10, "First one."),
        (0, 10, "First one."),
        (11, 22, "Second one!"),
        (11, 22, "Second one!"),
    ]
    assert chunks[0].data.startswith(b"RIFF") and chunks[0].format == OutputFormat("wav", 16000)
    assert allocator.held == 0 and engine.open_streams == 0


async def test_idle_end_speaks_what_came_then_ends_with_deadline_exceeded() -> None:
    engine, allocator = Engine(), Allocator()
    turn = speak_live(
        synthesizer(engine, allocator, idle_flush_s=0.05, idle_end_s=0.2),
        messages(START, Text("Never ended"), then=asyncio.Event()),
        deadline=asyncio.get_running_loop().time() + 60,
    )
    spoken: list[LiveChunk] = []
    with pytest.raises(errors.DeadlineExceeded, match=r"synth\.live\.idle_end_s"):
        async for chunk in turn:
            spoken.append(chunk)
    assert spoken and spoken[0].span.text == "Never ended"
    assert allocator.held == 0 and engine.open_streams == 0
