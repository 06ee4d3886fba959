"""Both adapters' live (streaming-input) sessions against the emulator's WebSocket APIs
over real loopback sockets: ElevenLabs ``stream-input`` and Cartesia ``tts/websocket``.

What a voice agent relies on: audio for a sentence arrives while later sentences are not
yet said, in order and attributed to the right sentence; word timings agree with the audio;
``aclose`` stops generation at the provider (its own ledger says so) and returns at once;
a dropped or stalled connection is an error of the taxonomy, never a hang.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from voiceslot.providers import cartesia_live
from voiceslot.providers.base import (
    CloneRequest,
    LiveAudio,
    LiveInputProvider,
    LiveRequest,
    LiveSession,
    Provider,
    SpeechOptions,
)
from voiceslot.providers.errors import AuthError, RateLimited, Transient
from voiceslot.testing.emulator import Fault, FaultKind, Op, ProviderEmulator
from voiceslot.testing.emulator.audio import speech_seconds
from voiceslot.testing.emulator.live_log import LiveRecord

KINDS = ["elevenlabs", "cartesia"]
DEADLINE_S = 20.0
"""Generous: a loaded 2-core machine; a hang fails the test instead of the suite."""
RATE = 16000
SENTENCES = ["Hello there.", "This is the second sentence, a little longer.", "Bye now!"]

MakeProvider = Callable[..., Provider]


async def open_session(
    make_provider: MakeProvider,
    kind: str,
    sample: Callable[[int], bytes],
    *,
    word_timings: bool = False,
    **config: object,
) -> LiveSession:
    provider = make_provider(kind, **config)
    assert isinstance(provider, LiveInputProvider)
    voice = await provider.clone(CloneRequest(label="vs-live-g1", sample=sample(3)))
    request = LiveRequest(
        voice.provider_voice_id,
        sample_rate_hz=RATE,
        options=SpeechOptions(word_timings=word_timings),
    )
    return provider.open_live(request)


async def collect(
    session: LiveSession, into: list[LiveAudio], heard: dict[int, asyncio.Event] | None = None
) -> None:
    """Drain ``audio()``; ``heard[n]`` is set once sentence n's first audio arrived."""
    async for piece in session.audio():
        into.append(piece)
        if heard is not None:
            heard.setdefault(piece.sentence, asyncio.Event()).set()


def heard_events(count: int) -> dict[int, asyncio.Event]:
    return {index: asyncio.Event() for index in range(count)}


def seconds_per_sentence(pieces: list[LiveAudio]) -> dict[int, float]:
    totals: dict[int, float] = {}
    for piece in pieces:
        totals[piece.sentence] = totals.get(piece.sentence, 0.0) + piece.pcm.duration_s
    return totals


def last_record(emu: ProviderEmulator, kind: str) -> LiveRecord:
    return emu.state.live.records(kind)[-1]


async def last_closed_record(emu: ProviderEmulator, kind: str) -> LiveRecord:
    """The latest session's record once the emulator has closed it: its ledger is written
    by the emulator's own thread, which may be a moment behind what the client saw."""

    def closed(records: list[LiveRecord]) -> bool:
        mine = [record for record in records if record.provider == kind]
        return bool(mine) and mine[-1].outcome != "open"

    await wait_live(emu, closed)
    return last_record(emu, kind)


async def wait_live(emu: ProviderEmulator, predicate: Callable[[list[LiveRecord]], bool]) -> None:
    ok = await asyncio.to_thread(emu.state.live.wait_for, predicate, DEADLINE_S)
    assert ok, f"emulator never reached the state; it has {emu.state.live.records()}"


@pytest.mark.parametrize("kind", KINDS)
async def test_audio_for_each_sentence_arrives_in_order_before_the_next_is_said(
    kind: str, make_provider: MakeProvider, emu: ProviderEmulator, sample: Callable[[int], bytes]
) -> None:
    session = await open_session(make_provider, kind, sample)
    pieces: list[LiveAudio] = []
    heard = heard_events(len(SENTENCES))
    consumer = asyncio.create_task(collect(session, pieces, heard))
    try:
        for index, sentence in enumerate(SENTENCES):
            assert await session.say(sentence) == index
            # Nothing more is said until this sentence is heard: no waiting for ``end``.
            await asyncio.wait_for(heard[index].wait(), DEADLINE_S)
            assert not any(heard[later].is_set() for later in range(index + 1, len(SENTENCES)))
        await session.end()
        await asyncio.wait_for(consumer, DEADLINE_S)
    finally:
        await session.aclose()

    order = [piece.sentence for piece in pieces]
    assert order == sorted(order)
    durations = seconds_per_sentence(pieces)
    assert sorted(durations) == [0, 1, 2]
    for index, sentence in enumerate(SENTENCES):
        # Each sentence's own audio, whole: the emulator speaks "<sentence> " for it.
        assert durations[index] == pytest.approx(speech_seconds(sentence + " "), abs=2 / RATE)
    assert all(piece.pcm.sample_rate == RATE and not piece.pcm.words for piece in pieces)
    record = await last_closed_record(emu, kind)
    assert record.outcome == "finished"
    assert record.text.split() == " ".join(SENTENCES).split()


@pytest.mark.parametrize("kind", KINDS)
async def test_word_timings_follow_the_audio(
    kind: str, make_provider: MakeProvider, sample: Callable[[int], bytes]
) -> None:
    session = await open_session(make_provider, kind, sample, word_timings=True)
    pieces: list[LiveAudio] = []
    consumer = asyncio.create_task(collect(session, pieces))
    try:
        for sentence in SENTENCES:
            await session.say(sentence)
        await session.end()
        await asyncio.wait_for(consumer, DEADLINE_S)
    finally:
        await session.aclose()

    words = [(piece.sentence, w) for piece in pieces for w in piece.pcm.words]
    assert [w.word for _, w in words] == " ".join(SENTENCES).split()
    starts = [w.start_s for _, w in words]
    assert starts == sorted(starts)
    assert all(w.start_s < w.end_s for _, w in words)
    # Each word lies inside its own sentence's audio, counted from the session's start.
    edges, total = {}, 0.0
    for index, seconds in sorted(seconds_per_sentence(pieces).items()):
        edges[index] = (total, total + seconds)
        total += seconds
    for sentence, word in words:
        begin, end = edges[sentence]
        assert begin - 0.002 <= word.start_s and word.end_s <= end + 0.002, (sentence, word)
    assert words[0][1].start_s == pytest.approx(0.0, abs=0.002)
    assert words[-1][1].end_s <= total + 0.002


@pytest.mark.parametrize("kind", KINDS)
async def test_aclose_stops_generation_at_the_provider(
    kind: str, make_provider: MakeProvider, emu: ProviderEmulator, sample: Callable[[int], bytes]
) -> None:
    session = await open_session(make_provider, kind, sample)
    emu.state.hold_streams()  # the provider sends one frame, then waits for us
    pieces: list[LiveAudio] = []
    heard = heard_events(1)
    consumer = asyncio.create_task(collect(session, pieces, heard))
    try:
        await session.say("A long sentence that takes the provider a good while to speak.")
        await asyncio.wait_for(heard[0].wait(), DEADLINE_S)
        await asyncio.wait_for(session.aclose(), DEADLINE_S)
        await asyncio.wait_for(consumer, DEADLINE_S)  # audio() ends with the session
        expected = "cancelled" if kind == "cartesia" else "client_closed"
        await wait_live(emu, lambda records: records[-1].outcome == expected)
    finally:
        emu.state.release_streams()
        await session.aclose()  # idempotent

    record = last_record(emu, kind)
    assert record.audio_frames == 1  # nothing was generated after the first frame
    assert len(pieces) == 1
    with pytest.raises(Exception, match="after aclose"):
        await session.say("More.")


@pytest.mark.parametrize("kind", KINDS)
async def test_dropped_connection_is_transient(
    kind: str, make_provider: MakeProvider, emu: ProviderEmulator, sample: Callable[[int], bytes]
) -> None:
    session = await open_session(make_provider, kind, sample)
    emu.state.faults.inject(Fault(FaultKind.STREAM_BREAK, op=Op.TTS_LIVE, provider=kind))
    pieces: list[LiveAudio] = []
    try:
        await session.say("The connection drops after the first frame of this sentence.")
        with pytest.raises(Transient):
            await asyncio.wait_for(collect(session, pieces), DEADLINE_S)
    finally:
        await session.aclose()
    assert len(pieces) <= 1
    assert (await last_closed_record(emu, kind)).outcome == "dropped"


@pytest.mark.parametrize("kind", KINDS)
async def test_a_stalled_provider_is_transient_not_a_hang(
    kind: str, make_provider: MakeProvider, emu: ProviderEmulator, sample: Callable[[int], bytes]
) -> None:
    session = await open_session(make_provider, kind, sample, timeout_s=2.0)
    emu.state.faults.inject(Fault(FaultKind.HANG, op=Op.TTS_LIVE, provider=kind, hang_s=10.0))
    try:
        await session.say("The provider never answers this one in time.")
        with pytest.raises(Transient, match="no answer"):
            await asyncio.wait_for(collect(session, []), DEADLINE_S)
    finally:
        await session.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_wrong_key_is_an_auth_error(
    kind: str, make_provider: MakeProvider, emu: ProviderEmulator
) -> None:
    provider = make_provider(kind, api_key="not-a-key")
    assert isinstance(provider, LiveInputProvider)
    session = provider.open_live(LiveRequest("any-voice", sample_rate_hz=RATE))
    try:
        with pytest.raises(AuthError):
            await session.say("Hello.")
    finally:
        await session.aclose()
    assert emu.state.live.records(kind) == []


@pytest.mark.parametrize("kind", KINDS)
async def test_a_refused_socket_is_rate_limited_with_the_hint(
    kind: str, make_provider: MakeProvider, emu: ProviderEmulator, sample: Callable[[int], bytes]
) -> None:
    session = await open_session(make_provider, kind, sample)
    emu.state.faults.inject(
        Fault(FaultKind.RATE_LIMITED, op=Op.TTS_LIVE, provider=kind, retry_after=2.0)
    )
    try:
        with pytest.raises(RateLimited) as raised:
            await session.say("Hello.")
    finally:
        await session.aclose()
    assert raised.value.retry_after == 2.0


async def speak_across_an_expiry(session: LiveSession, emu: ProviderEmulator) -> None:
    """Say a sentence, pause until the emulator expired its context, say another: the
    second is heard whole, on a second context."""
    pieces: list[LiveAudio] = []
    heard = heard_events(2)
    consumer = asyncio.create_task(collect(session, pieces, heard))
    try:
        await session.say(SENTENCES[0])
        await asyncio.wait_for(heard[0].wait(), DEADLINE_S)
        # The pause itself is the scenario: the emulator expires the context meanwhile.
        await wait_live(emu, lambda records: records[-1].outcome == "expired")
        await session.say(SENTENCES[1])
        await session.end()
        await asyncio.wait_for(consumer, DEADLINE_S)
    finally:
        await session.aclose()

    durations = seconds_per_sentence(pieces)
    assert durations[1] == pytest.approx(speech_seconds(SENTENCES[1] + " "), abs=2 / RATE)
    first, second = emu.state.live.records("cartesia")[-2:]
    assert (first.outcome, second.outcome) == ("expired", "finished")
    assert first.context_id != second.context_id
    assert second.text.strip() == SENTENCES[1]


async def test_cartesia_pause_longer_than_the_context_expiry_loses_nothing(
    make_provider: MakeProvider, emu: ProviderEmulator, sample: Callable[[int], bytes]
) -> None:
    # The session sees it was quiet long enough and moves to a fresh context itself.
    await speak_across_an_expiry(await open_session(make_provider, "cartesia", sample), emu)


@pytest.mark.parametrize("kind", KINDS)
async def test_the_session_connects_before_its_first_sentence_and_only_once(
    kind: str,
    make_provider: MakeProvider,
    emu: ProviderEmulator,
    sample: Callable[[int], bytes],
    wait_until: Callable[..., Awaitable[None]],
) -> None:
    session = await open_session(make_provider, kind, sample)
    try:
        # Nothing said yet: the handshake is already under way.
        await wait_until(lambda state: state.request_count(kind, Op.TTS_LIVE) == 1, DEADLINE_S)
        pieces: list[LiveAudio] = []
        consumer = asyncio.create_task(collect(session, pieces))
        for sentence in SENTENCES:
            await session.say(sentence)
        await session.end()
        await asyncio.wait_for(consumer, DEADLINE_S)
    finally:
        await session.aclose()
    assert emu.state.request_count(kind, Op.TTS_LIVE) == 1  # type: ignore[arg-type]
    assert sorted({piece.sentence for piece in pieces}) == [0, 1, 2]


async def test_cartesia_says_it_again_when_the_context_expired_unnoticed(
    make_provider: MakeProvider,
    emu: ProviderEmulator,
    sample: Callable[[int], bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The session does not notice the expiry in time (a slow consumer, a loaded machine):
    # the provider answers context_closed, and the sentence is said on a fresh context.
    monkeypatch.setattr(cartesia_live, "ROTATE_AFTER_S", 3600.0)
    await speak_across_an_expiry(await open_session(make_provider, "cartesia", sample), emu)


async def say_one_pause_and_end(
    make_provider: MakeProvider,
    sample: Callable[[int], bytes],
    emu: ProviderEmulator,
    pause: Callable[[], Awaitable[object]],
) -> None:
    """On a Cartesia session: say one sentence, wait until the emulator has sent all of its
    audio (its ``flush_done`` follows), ``pause()``, then ``end`` and wait for ``audio()``
    to end."""
    session = await open_session(make_provider, "cartesia", sample)
    consumer = asyncio.create_task(collect(session, []))
    try:
        await session.say(SENTENCES[0])
        await wait_live(emu, lambda records: bool(records) and records[-1].flushes == 1)
        await pause()
        await session.end()
        await asyncio.wait_for(consumer, DEADLINE_S)
    finally:
        await session.aclose()


async def test_cartesia_end_after_everything_was_heard_finishes_the_context(
    make_provider: MakeProvider, emu: ProviderEmulator, sample: Callable[[int], bytes]
) -> None:
    # All audio heard before ``end``: the context is still ended as finished at the
    # provider, neither cancelled by ``aclose`` nor left to expire.
    # The pause lets the flush_done reach the session: nothing is owed.
    await say_one_pause_and_end(make_provider, sample, emu, lambda: asyncio.sleep(0.1))
    record = await last_closed_record(emu, "cartesia")
    assert (record.outcome, record.text.strip()) == ("finished", SENTENCES[0])


async def test_cartesia_end_on_an_expired_context_ends_the_session(
    make_provider: MakeProvider, emu: ProviderEmulator, sample: Callable[[int], bytes]
) -> None:
    # The context expired before ``end`` (and the session did not rotate): the provider's
    # context_closed is the end, and no fresh context is opened just to end it.
    def expired() -> Awaitable[None]:
        return wait_live(emu, lambda records: records[-1].outcome == "expired")

    await say_one_pause_and_end(make_provider, sample, emu, expired)
    assert [record.outcome for record in emu.state.live.records("cartesia")] == ["expired"]
