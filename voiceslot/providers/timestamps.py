"""Word timings from the providers' timestamp answers, as ``base.WordTime``.

- Cartesia (``/tts/sse`` and the WebSocket with ``add_timestamps``): ``timestamps`` events
  carry ``word_timestamps {words, start, end}`` in seconds from the start of the audio.
- ElevenLabs (``/stream/with-timestamps``): each JSON line carries ``audio_base64`` and a
  character ``alignment``; words are the runs of characters between whitespace, a word
  split across lines is completed by the next. Whether a line's times count from the start
  of the answer or of that line is not pinned down by the documentation, so
  ``chunk_origin`` tells them apart by where the line's first character falls.

Pure functions and small state, fed by the adapters.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from voiceslot.providers.base import WordTime
from voiceslot.providers.elevenlabs_live import Attribution
from voiceslot.providers.errors import Fatal


def cartesia_words(payload: Mapping[str, Any], *, origin_s: float = 0.0) -> list[WordTime]:
    """Words of a ``timestamps`` event, shifted by ``origin_s``; malformed entries are
    skipped rather than trusted."""
    stamps = payload.get("word_timestamps")
    if not isinstance(stamps, Mapping):
        return []
    words, starts, ends = stamps.get("words"), stamps.get("start"), stamps.get("end")
    if not (isinstance(words, list) and isinstance(starts, list) and isinstance(ends, list)):
        return []
    return [
        WordTime(str(word), origin_s + float(start), origin_s + float(end))
        for word, start, end in zip(words, starts, ends, strict=False)
        if isinstance(start, int | float) and isinstance(end, int | float)
    ]


def chunk_origin(first_start_s: float, audio_before_s: float) -> float:
    """What to add to a line's times: 0 when they already count from the start of the
    answer (its first character falls near the audio before it), else the audio before
    it (they count from the line's own start)."""
    if audio_before_s <= 0 or first_start_s >= audio_before_s / 2:
        return 0.0
    return audio_before_s


class ElevenLabsTimedStream:
    """Decodes ``/stream/with-timestamps`` lines of one answer: audio and the words each
    line completes, in seconds from the start of the answer."""

    def __init__(self, text: str, *, sample_rate: int, provider: str) -> None:
        self._attribution = Attribution()
        self._attribution.add_sentence(text)
        self._rate = sample_rate
        self._provider = provider
        self._audio_s = 0.0

    def feed(self, line: Mapping[str, Any]) -> tuple[bytes, list[WordTime]]:
        """(raw audio bytes, words completed) of one line."""
        try:
            raw = base64.b64decode(str(line.get("audio_base64") or ""), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Fatal(f"audio_base64 is not base64: {exc}", provider=self._provider) from exc
        words: list[WordTime] = []
        aligned = line.get("alignment") or line.get("normalized_alignment")
        if isinstance(aligned, Mapping):
            chars = aligned.get("characters")
            starts = aligned.get("character_start_times_seconds")
            ends = aligned.get("character_end_times_seconds")
            if isinstance(chars, list) and isinstance(starts, list) and isinstance(ends, list):
                origin = chunk_origin(float(starts[0]) if starts else 0.0, self._audio_s)
                _, words = self._attribution.feed(
                    [str(c) for c in chars],
                    [float(s) * 1000 for s in starts],
                    [(float(e) - float(s)) * 1000 for s, e in zip(starts, ends, strict=False)],
                    offset_s=origin,
                )
        self._audio_s += len(raw) / 2 / self._rate
        return raw, words
