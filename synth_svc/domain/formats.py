"""Requested audio formats: validation and defaults. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from voiceslot.audio import ENCODINGS
from voiceslot.errors import InvalidArgument

MIN_RATE, MAX_RATE = 8000, 48000


@dataclass(frozen=True)
class OutputFormat:
    encoding: str
    """One of ENCODINGS."""
    sample_rate: int
    """0 until resolved against the engine's native rate."""

    def resolved(self, native_rate: int) -> OutputFormat:
        return self if self.sample_rate else OutputFormat(self.encoding, native_rate)


def requested_format(
    encoding: str | None, sample_rate: int, *, default_encoding: str
) -> OutputFormat:
    encoding = encoding or default_encoding
    if encoding not in ENCODINGS:
        raise InvalidArgument("format.encoding", f"must be one of {', '.join(ENCODINGS)}")
    if sample_rate and not MIN_RATE <= sample_rate <= MAX_RATE:
        raise InvalidArgument(
            "format.sample_rate_hz", f"must be 0 (native) or {MIN_RATE}..{MAX_RATE}"
        )
    return OutputFormat(encoding, sample_rate)


FASTEST_SPEECH_CHARS_PER_S = 25.0
"""Characters of text per second of speech, faster than any engine reads prose (people
speak 12-18; the engines measured here 15-23): text of n characters makes at least
n / 25 seconds of audio."""
LOWEST_NATIVE_RATE = 16000
"""The lowest rate an engine speaks at natively, for estimates before it has spoken."""


def least_audio_seconds(chars: int) -> float:
    """The shortest audio that ``chars`` characters of text can be spoken in."""
    return chars / FASTEST_SPEECH_CHARS_PER_S


def too_large_for_one_message(
    size: int, max_bytes: int, fmt: OutputFormat, *, estimated: bool
) -> InvalidArgument | None:
    """The error for a unary answer of ``size`` bytes when that is more than one message
    may carry, naming the streaming call that has no such limit; None when it fits."""
    if size <= max_bytes:
        return None
    mib = 1024 * 1024
    rate = f" at {fmt.sample_rate} Hz" if fmt.sample_rate else ""
    what = "would be at least" if estimated else "is"
    return InvalidArgument(
        "text",
        f"the audio {what} {size / mib:.1f} MiB as {fmt.encoding}{rate}, more than the "
        f"{max_bytes / mib:.1f} MiB one Synthesize answer may carry; use SynthesizeStream, "
        "or a compressed encoding (mp3, opus) or a lower sample rate",
    )
