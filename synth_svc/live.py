"""The live turn, for voice agents: text fragments in as an LLM produces them, audio out
sentence by sentence while more text is still coming. Knows nothing of gRPC.

Several things run at once for one turn, so that none waits for another:

- the *pump* reads the client's messages into an inbox (the transport's own flow control
  pushes back on a client faster than that);
- the *feeder* takes them from the inbox, enforces the turn's bounds
  (``synth.live.*``; decisions in ``synth_svc.domain.live``), cuts the text into
  sentences as their ends become certain (``voiceslot.text_stream``), flushes after an
  idle spell, and queues the sentences;
- the *sayer* hands queued sentences to the engine's live session once there is one;
- the turn itself (the caller's iteration) takes the lease at ``start`` (so a cold voice
  starts cloning while the LLM is still writing), opens the session (the provider's own
  streaming-input API where it has one, else sentence by sentence:
  ``voiceslot.providers.live``), and encodes its audio into one container for the turn,
  each chunk tagged with the span of text it speaks; each sentence's wait from its end
  becoming certain to its first audio (what a voice agent waits for) is the histogram
  ``voiceslot_live_first_audio_seconds``.

A *listener* iterates the session's audio (a provider's stream is entered and left in one
task). Every wait of the turn is raced against these tasks, so a bound exceeded, a bad
message or a provider failure ends the turn at once with its own error, never a hang. On every way out
(end, error, the caller cancelling for a barge-in, server shutdown) the tasks are
stopped, the session closed (generation stops at the provider), the encoder closed and
the lease released then, not when its TTL runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from synth_svc.domain import live as rules
from synth_svc.domain.live import End, Flush, LiveChunk, LiveEvent, Span, Text
from synth_svc.service import SENTENCE_MAX_CHARS, ChunkEncoder, Synthesizer
from voiceslot import telemetry
from voiceslot.config import LiveConfig
from voiceslot.ids import require_id
from voiceslot.providers.base import LiveAudio, LiveRequest, LiveSession
from voiceslot.providers.live import open_live
from voiceslot.providers.options import check_finite
from voiceslot.text_stream import Piece, SentenceCutter
from voiceslot.token_bucket import Bucket, TokenBucket
from voiceslot.validation import language_tag
from voiceslot.waiting import cancel_and_wait

T = TypeVar("T")

INBOX_MESSAGES = 16
"""Messages read ahead of the feeder; beyond that the client waits (flow control)."""
AUDIO_AHEAD = 4
"""Audio chunks the session may be ahead of the encoder and the client."""
_CLOSED = object()  # the client closed its side of the stream


@dataclass(eq=False)
class _Turn:
    """What the turn's tasks share."""

    started: float
    spans: dict[int, Piece] = field(default_factory=dict)
    """The piece each index given by ``LiveSession.say`` speaks."""
    cut_at: list[float] = field(default_factory=list)
    """When each piece was queued for the engine (its end certain), in ``say`` order."""
    spoken_upto: int = 0
    """Turn offset up to which audio has started."""
    ended_with: Exception | None = None
    """An error to end the turn with once what was received is spoken (idle end)."""


async def speak_live(
    synth: Synthesizer, events: AsyncIterator[LiveEvent], *, deadline: float
) -> AsyncIterator[LiveChunk]:
    """The turn's audio, in order. ``deadline`` (monotonic) bounds the wait for the voice's
    lease, as for the other calls; the turn's own bounds are ``synth.config.live``."""
    limits = synth.config.live
    turn = _Turn(started=time.monotonic())
    turn_deadline = turn.started + limits.max_turn_s
    inbox: asyncio.Queue[Any] = asyncio.Queue(INBOX_MESSAGES)
    pieces: asyncio.Queue[Piece | None] = asyncio.Queue()
    pump = asyncio.create_task(_pump(events, inbox))
    tasks: list[asyncio.Task[Any]] = [pump]
    session: LiveSession | None = None
    async with AsyncExitStack() as stack:
        try:
            first = await _within(
                inbox.get(),
                guards=(pump,),
                until=turn.started + limits.idle_end_s,
                expired=lambda: rules.expired(rules.Expiry.IDLE_END, limits),
            )
            start = rules.check_first(None if first is _CLOSED else first)
            require_id("voice_id", start.voice_id, "v")
            language_tag("language", start.language, default="")
            check_finite(start.options)  # the engine's own ranges: once the lease says which
            cutter = SentenceCutter(max_chars=SENTENCE_MAX_CHARS)
            feeder = asyncio.create_task(_feed(inbox, cutter, pieces, turn, limits))
            tasks.append(feeder)
            out_of_time = lambda: rules.expired(rules.Expiry.TURN, limits)  # noqa: E731
            active = await _within(
                stack.enter_async_context(
                    synth.allocator.leased(start.voice_id, deadline=deadline)
                ),
                guards=(pump, feeder),
                until=turn_deadline,
                expired=out_of_time,
            )
            engine = synth.engine(active)
            engine.check_options(start.options)  # before any engine work
            session = open_live(
                engine,
                LiveRequest(
                    active.provider_voice_id,
                    language=start.language or active.language,
                    sample_rate_hz=start.format.sample_rate,
                    options=start.options,
                ),
            )
            sayer = asyncio.create_task(_say(pieces, session, turn))
            tasks.append(sayer)
            encoder = ChunkEncoder(start.format)
            stack.callback(encoder.close)
            heard: asyncio.Queue[LiveAudio | None] = asyncio.Queue(AUDIO_AHEAD)
            listener = asyncio.create_task(_listen(session, heard))
            tasks.append(listener)
            sequence = 0
            span = Span(0, 0, "")
            first_heard = -1  # the last sentence whose first audio was timed
            while True:
                said = await _within(
                    heard.get(),
                    guards=(pump, feeder, sayer, listener),
                    until=turn_deadline,
                    expired=out_of_time,
                )
                if said is None:
                    break
                piece = turn.spans[said.sentence]
                if said.sentence > first_heard:  # what a voice agent waits for
                    first_heard = said.sentence
                    telemetry.LIVE_FIRST_AUDIO_SECONDS.labels(active.provider).observe(
                        time.monotonic() - turn.cut_at[said.sentence]
                    )
                span = Span(piece.start, piece.end, piece.source)
                turn.spoken_upto = max(turn.spoken_upto, piece.end)
                data = await encoder.feed(said.pcm)
                if data or said.pcm.words:
                    yield LiveChunk(data, sequence, span, encoder.format, said.pcm.words)
                    sequence += 1
            for task in (feeder, sayer):  # both ended well, or audio() could not have
                await task
            if encoder.started and (tail := await encoder.finish()):
                yield LiveChunk(tail, sequence, span, encoder.format)
            if turn.ended_with is not None:
                raise turn.ended_with
        finally:
            await cancel_and_wait(*tasks)  # the listener's end closes the provider's stream
            if session is not None:
                with contextlib.suppress(Exception):
                    await session.aclose()


async def _listen(session: LiveSession, heard: asyncio.Queue[LiveAudio | None]) -> None:
    """The session's audio, iterated by this one task from start to end (a provider's
    stream is entered and left in the same task), onto ``heard``; ``None`` last."""
    async for audio in session.audio():
        await heard.put(audio)
    await heard.put(None)


async def _pump(events: AsyncIterator[LiveEvent], inbox: asyncio.Queue[Any]) -> None:
    async for event in events:
        await inbox.put(event)
    await inbox.put(_CLOSED)


async def _feed(
    inbox: asyncio.Queue[Any],
    cutter: SentenceCutter,
    pieces: asyncio.Queue[Piece | None],
    turn: _Turn,
    limits: LiveConfig,
) -> None:
    """The client's messages after ``start``, into sentences on ``pieces`` (``None`` last),
    within the turn's bounds."""
    rate = TokenBucket(rate_per_s=limits.max_fragments_per_s, burst=limits.max_fragments_per_s)
    bucket = Bucket(rate.burst, None)
    last = time.monotonic()

    def queue(ready: list[Piece]) -> None:
        for piece in ready:
            turn.cut_at.append(time.monotonic())
            pieces.put_nowait(piece)

    # One get() outlives the timeouts: cancelling one that just took a message loses it.
    getting: asyncio.Future[Any] | None = None
    try:
        while True:
            wait, what = rules.next_expiry(
                now=time.monotonic(),
                turn_started=turn.started,
                last_message=last,
                buffered=cutter.buffered > 0,
                limits=limits,
            )
            getting = getting or asyncio.ensure_future(inbox.get())
            await asyncio.wait({getting}, timeout=wait)
            if getting.done():
                message, getting = getting.result(), None
            elif what is rules.Expiry.IDLE_FLUSH:
                queue(cutter.flush())
                continue
            elif what is rules.Expiry.TURN:
                raise rules.expired(what, limits)
            else:  # idle end: what was received is still spoken, then the turn fails
                turn.ended_with = rules.expired(what, limits)
                message = End()
            last = time.monotonic()
            if message is _CLOSED:
                message = End()  # the client closed its side without `end`: the same
            event = rules.check_next(message)
            stamp = datetime.now(UTC)
            if rate.available(bucket, stamp) < 1:
                raise rules.too_fast(limits, rate.wait_s(bucket, stamp))
            bucket = rate.spend(bucket, 1, stamp)
            if isinstance(event, Text):
                rules.check_fragment(event.text, limits)
                queue(cutter.add(event.text))
                rules.check_buffered(cutter.received - turn.spoken_upto, limits)
            elif isinstance(event, Flush):
                queue(cutter.flush())
            else:
                queue(cutter.flush())
                pieces.put_nowait(None)
                return
    finally:
        if getting is not None:
            getting.cancel()


async def _say(pieces: asyncio.Queue[Piece | None], session: LiveSession, turn: _Turn) -> None:
    """Queued sentences to the session, in order; ``end`` after the last."""
    said = 0
    while (piece := await pieces.get()) is not None:
        # Recorded before saying: the piece's audio may come while say() is still busy.
        turn.spans[said] = piece
        index = await session.say(piece.text)
        if index != said:
            raise RuntimeError(f"the live session numbered piece {said} as {index}")
        said += 1
    await session.end()


async def _within(
    work: Awaitable[T],
    *,
    guards: tuple[asyncio.Task[Any], ...],
    until: float,
    expired: Callable[[], Exception],
) -> T:
    """``work``'s result, unless a guard fails first (its error is raised) or ``until``
    (monotonic) passes (``expired()`` is raised). A guard that ends well stops being
    watched. ``work`` is cancelled when it loses."""
    task = asyncio.ensure_future(work)
    watched = {g for g in guards if not (g.done() and g.exception() is None)}
    try:
        while True:
            remaining = until - time.monotonic()
            if remaining <= 0:
                raise expired()
            done, _ = await asyncio.wait(
                {task, *watched}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if task in done:
                return task.result()
            for guard in done:
                if (error := guard.exception()) is not None:
                    raise error
                watched.discard(guard)
    finally:
        await cancel_and_wait(task)  # nothing to do when it already ended
