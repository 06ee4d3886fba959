"""Requested audio formats: validation and defaults. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from voiceslot.errors import InvalidArgument

ENCODINGS = ("wav", "pcm16", "mp3", "opus")
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
