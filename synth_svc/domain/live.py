"""The rules of a live turn (``SynthesizeLive``), as plain values and pure functions.

A turn is a stream of messages from the client: ``Start`` exactly once and first, then
``Text`` fragments and ``Flush`` marks in any order, then ``End``. What the server does
while it waits for the next message depends only on the clock and a few facts (when the
turn started, when the last message came, whether text is buffered), so that decision is
made here (``next_expiry``), as are the errors for each bound, which name the setting
(``synth.live.*``) the client ran into.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from voiceslot.config import LiveConfig
from voiceslot.errors import DeadlineExceeded, InvalidArgument, QuotaExceeded, QuotaViolation
from voiceslot.providers.base import SpeechOptions, WordTime

from .formats import OutputFormat


@dataclass(frozen=True)
class Start:
    """The turn's first message: what to speak with."""

    voice_id: str
    format: OutputFormat
    language: str = ""
    """Empty: the voice's own language."""
    options: SpeechOptions = SpeechOptions()


@dataclass(frozen=True)
class Text:
    """A fragment of the turn's text, as the client's LLM produced it."""

    text: str


@dataclass(frozen=True)
class Flush:
    """Speak what is buffered now, even mid-sentence."""


@dataclass(frozen=True)
class End:
    """No more text: speak the rest, then the turn ends."""


LiveEvent = Start | Text | Flush | End


@dataclass(frozen=True)
class Span:
    """Characters ``[start, end)`` of the turn's text (code points), and that text."""

    start: int
    end: int
    text: str


@dataclass(frozen=True)
class LiveChunk:
    """Encoded audio of a turn, in order."""

    data: bytes
    sequence: int
    span: Span
    """The text this chunk speaks."""
    format: OutputFormat
    words: tuple[WordTime, ...] = ()
    """Words whose timing came with this chunk, from the start of the turn's audio."""


class Expiry(Enum):
    """What happens when no message comes before the deadline ``next_expiry`` gives."""

    IDLE_FLUSH = "idle_flush_s"
    IDLE_END = "idle_end_s"
    TURN = "max_turn_s"


def next_expiry(
    *, now: float, turn_started: float, last_message: float, buffered: bool, limits: LiveConfig
) -> tuple[float, Expiry]:
    """(seconds to wait for the next message, what to do if none comes). Buffered text
    is flushed after ``idle_flush_s`` of silence, the turn ends after ``idle_end_s``, and
    nothing outlasts ``max_turn_s``; the earliest wins."""
    candidates = [
        (turn_started + limits.max_turn_s, Expiry.TURN),
        (last_message + limits.idle_end_s, Expiry.IDLE_END),
    ]
    if buffered:
        candidates.append((last_message + limits.idle_flush_s, Expiry.IDLE_FLUSH))
    at, what = min(candidates, key=lambda c: c[0])
    return max(0.0, at - now), what


def setting(name: str) -> str:
    return f"synth.live.{name}"


def check_first(event: LiveEvent | None) -> Start:
    """The turn's first message, which must be ``start``."""
    if isinstance(event, Start):
        return event
    got = "the end of the stream" if event is None else f"`{_kind(event)}`"
    raise InvalidArgument("start", f"the first message of a turn must be `start`, not {got}")


def check_next(event: LiveEvent) -> Text | Flush | End:
    """A message after ``start``: anything but a second ``start``."""
    if isinstance(event, Start):
        raise InvalidArgument("start", "was sent twice; a turn has exactly one `start`")
    return event


def check_fragment(text: str, limits: LiveConfig) -> None:
    if len(text) > limits.max_fragment_chars:
        raise InvalidArgument(
            "text",
            f"a fragment is {len(text)} characters long; the limit is "
            f"{limits.max_fragment_chars} ({setting('max_fragment_chars')})",
        )


def check_buffered(waiting: int, limits: LiveConfig) -> None:
    """``waiting``: characters received whose audio has not started yet."""
    if waiting > limits.max_buffered_chars:
        raise QuotaExceeded(
            f"{waiting} characters of text are waiting to be spoken; at most "
            f"{limits.max_buffered_chars} may ({setting('max_buffered_chars')}): send text "
            "no faster than it is spoken, or in shorter turns",
            violations=(
                QuotaViolation(setting("max_buffered_chars"), f"{limits.max_buffered_chars}"),
            ),
        )


def too_fast(limits: LiveConfig, wait_s: float) -> QuotaExceeded:
    return QuotaExceeded(
        f"messages arrive faster than {limits.max_fragments_per_s:g} a second "
        f"({setting('max_fragments_per_s')}); join fragments before sending them",
        violations=(
            QuotaViolation(setting("max_fragments_per_s"), f"{limits.max_fragments_per_s:g}/s"),
        ),
        retry_after=wait_s,
    )


def expired(what: Expiry, limits: LiveConfig) -> DeadlineExceeded:
    """The error a turn ends with when ``what`` expired (never for IDLE_FLUSH)."""
    if what is Expiry.TURN:
        return DeadlineExceeded(
            f"the turn lasted {limits.max_turn_s:g} s, the longest allowed "
            f"({setting('max_turn_s')}); start a new turn"
        )
    return DeadlineExceeded(
        f"no message for {limits.idle_end_s:g} s ({setting('idle_end_s')}): the turn ended "
        "after speaking what it had; send `end` to finish a turn"
    )


def _kind(event: LiveEvent) -> str:
    return type(event).__name__.lower()
