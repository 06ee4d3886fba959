"""Timings the emulator reports beside its audio: characters and words, in seconds.

``audio.render_speech`` makes ``audio.speech_seconds(text)`` of audio for a text; the
emulator says every character of that text takes an equal share of it. That is not how a
voice speaks, but it is what a test needs: timings that are consistent with the audio (they
start at 0, never go backwards and end where the audio ends), deterministic, and word
boundaries exactly where the text has them. Pure functions, shared by the HTTP timestamp
endpoints and the WebSocket APIs of both providers.
"""

from __future__ import annotations

from dataclasses import dataclass

from voiceslot.testing.emulator import audio


@dataclass(frozen=True)
class CharTime:
    char: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class WordSpan:
    word: str
    start_s: float
    end_s: float


def char_times(text: str, *, offset_s: float = 0.0) -> list[CharTime]:
    """Each character of ``text`` with its share of ``speech_seconds(text)``, shifted by
    ``offset_s`` (the audio that came before it in the same answer)."""
    if not text:
        return []
    step = audio.speech_seconds(text) / len(text)
    return [
        CharTime(char, offset_s + index * step, offset_s + (index + 1) * step)
        for index, char in enumerate(text)
    ]


def word_spans(chars: list[CharTime]) -> list[WordSpan]:
    """Words (runs of non-space characters) from character timings."""
    words: list[WordSpan] = []
    current: list[CharTime] = []
    for item in [*chars, CharTime(" ", 0.0, 0.0)]:
        if item.char.isspace():
            if current:
                words.append(
                    WordSpan(
                        "".join(c.char for c in current), current[0].start_s, current[-1].end_s
                    )
                )
                current = []
        else:
            current.append(item)
    return words


def in_window(chars: list[CharTime], start_s: float, end_s: float) -> list[CharTime]:
    """The characters that start inside ``[start_s, end_s)``: those a piece of audio
    covering that window is sent with."""
    return [c for c in chars if start_s <= c.start_s < end_s]


def elevenlabs_alignment(chars: list[CharTime], *, origin_s: float = 0.0) -> dict[str, list]:
    """ElevenLabs' WebSocket alignment object (``chars``, ``charStartTimesMs``,
    ``charsDurationsMs``), times in whole ms from ``origin_s``."""
    return {
        "chars": [c.char for c in chars],
        "charStartTimesMs": [round((c.start_s - origin_s) * 1000) for c in chars],
        "charsDurationsMs": [round((c.end_s - c.start_s) * 1000) for c in chars],
    }


def elevenlabs_http_alignment(chars: list[CharTime]) -> dict[str, list]:
    """ElevenLabs' HTTP ``CharacterAlignmentResponseModel`` (seconds from the start)."""
    return {
        "characters": [c.char for c in chars],
        "character_start_times_seconds": [round(c.start_s, 4) for c in chars],
        "character_end_times_seconds": [round(c.end_s, 4) for c in chars],
    }


def cartesia_word_timestamps(words: list[WordSpan]) -> dict[str, list]:
    """Cartesia's ``WordTimestamps`` (``words``, ``start``, ``end`` in seconds)."""
    return {
        "words": [w.word for w in words],
        "start": [round(w.start_s, 4) for w in words],
        "end": [round(w.end_s, 4) for w in words],
    }
