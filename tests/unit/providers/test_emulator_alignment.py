"""The emulator's timings and streaming-input rules, as pure functions: timings cover its
audio exactly, words split where the text has spaces, ElevenLabs' chunk schedule and
Cartesia's sentence buffering."""

from __future__ import annotations

import pytest

from voiceslot.testing.emulator import alignment
from voiceslot.testing.emulator.audio import speech_seconds
from voiceslot.testing.emulator.cartesia_ws import speakable_prefix
from voiceslot.testing.emulator.elevenlabs_ws import (
    DEFAULT_SCHEDULE,
    next_threshold,
    parse_schedule,
)


def test_character_times_cover_the_audio_from_the_offset() -> None:
    text = "Hello there, you."
    chars = alignment.char_times(text, offset_s=1.5)
    assert [c.char for c in chars] == list(text)
    assert chars[0].start_s == 1.5
    assert chars[-1].end_s == pytest.approx(1.5 + speech_seconds(text))
    assert all(a.end_s == pytest.approx(b.start_s) for a, b in zip(chars, chars[1:], strict=False))
    assert alignment.char_times("") == []


def test_words_run_between_spaces() -> None:
    words = alignment.word_spans(alignment.char_times("  Two\twords. "))
    assert [w.word for w in words] == ["Two", "words."]
    assert words[0].end_s <= words[1].start_s


def test_window_holds_the_characters_that_start_in_it() -> None:
    chars = alignment.char_times("abcd")
    step = chars[1].start_s
    assert [c.char for c in alignment.in_window(chars, step, 3 * step)] == ["b", "c"]


def test_elevenlabs_alignment_counts_from_the_frame() -> None:
    chars = alignment.char_times("ab", offset_s=2.0)
    aligned = alignment.elevenlabs_alignment(chars, origin_s=2.0)
    assert aligned["chars"] == ["a", "b"]
    assert aligned["charStartTimesMs"][0] == 0
    assert sum(aligned["charsDurationsMs"]) == pytest.approx(speech_seconds("ab") * 1000, abs=2)


def test_chunk_schedule() -> None:
    assert parse_schedule(None) == DEFAULT_SCHEDULE
    assert parse_schedule({"chunk_length_schedule": [50, 80]}) == (50, 80)
    assert [next_threshold((50, 80), n) for n in range(3)] == [50, 80, 80]
    for bad in ([], [10], ["x"], 5):
        with pytest.raises(ValueError):
            parse_schedule({"chunk_length_schedule": bad})


@pytest.mark.parametrize(
    ("buffer", "cut"),
    [
        ("Half a sen", 0),
        ("One. Two", 5),
        ("Really?! Yes.", 13),
        ('He said "no." Then', 14),
    ],
)
def test_cartesia_speaks_up_to_the_last_sentence_end(buffer: str, cut: int) -> None:
    assert speakable_prefix(buffer) == cut
