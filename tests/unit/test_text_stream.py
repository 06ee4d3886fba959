"""The incremental sentence cutter: the same sentences as ``pieces_to_speak`` however the
text is fragmented, each out as soon as its end is certain and no sooner, with spans
that point at the turn's text."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voiceslot.errors import InvalidArgument
from voiceslot.text import MAX_MARKS_PER_CHARACTER, normalize, pieces_to_speak
from voiceslot.text_stream import Piece, SentenceCutter

PROSE = (
    "Dr. Smith is 3.5 m tall. He lives in the U.S. with his cat! Does it purr? "
    "It does… mostly, e.g. at night. Prices rose approx. five percent. "
    '雨が降っています。傘を持っていますか？ "Quoted," she said. "Then ended." '
    "Ellipses... are fine. The end"
)


def cut(fragments: list[str], *, max_chars: int = 240) -> list[Piece]:
    cutter = SentenceCutter(max_chars=max_chars)
    pieces: list[Piece] = []
    for fragment in fragments:
        pieces.extend(cutter.add(fragment))
    pieces.extend(cutter.flush())
    assert cutter.buffered == 0
    return pieces


def fragmented(text: str, cuts: list[int]) -> list[str]:
    points = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in zip(points, points[1:], strict=False)]


def assert_spans(text: str, pieces: list[Piece]) -> None:
    at = 0
    for piece in pieces:
        assert at <= piece.start < piece.end <= len(text)
        assert text[piece.start : piece.end] == piece.source
        assert piece.text == normalize(piece.source)
        at = piece.end


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_any_fragmentation_cuts_like_the_whole_text(cuts: list[int]) -> None:
    pieces = cut(fragmented(PROSE, cuts))
    assert [p.text for p in pieces] == pieces_to_speak(normalize(PROSE), max_chars=240)
    assert_spans(PROSE, pieces)


@settings(max_examples=100, deadline=None)
@given(
    st.text(st.sampled_from(list("abc XYZ.,!?;:…。'\"\n\t0123456789")), min_size=1, max_size=400),
    st.lists(st.integers(min_value=0, max_value=1000), max_size=30),
    st.integers(min_value=8, max_value=60),
)
def test_never_drops_or_reorders_what_has_something_to_say(
    text: str, cuts: list[int], max_chars: int
) -> None:
    pieces = cut(fragmented(text, cuts), max_chars=max_chars)
    assert_spans(text, pieces)
    for piece in pieces:
        assert len(piece.source) <= max_chars
    spoken = "".join(p.source for p in pieces)
    # Only pieces without a letter or a digit are ever left out.
    assert re.sub(r"[^\w]|_", "", spoken) == re.sub(r"[^\w]|_", "", text)


@pytest.mark.parametrize(
    ("fragments", "ready_after"),
    [
        # "." alone: certain once the next word's first character has come.
        (["Hello world.", " ", "Next"], 2),
        # "3." may become "3.5"; "Dr." may go on as " Smith".
        (["It is 3.", "5 metres. ", "And"], 2),
        (["Ask Dr.", " Smith now. ", "Ok"], 2),
        # "!" "?" "…" are certain once anything follows (the run and quotes are complete).
        (["Stop!", " "], 1),
        (["Really?", "!", " "], 2),
        (["雨です。", "次"], 1),
    ],
)
def test_a_sentence_leaves_once_its_end_is_certain(fragments: list[str], ready_after: int) -> None:
    cutter = SentenceCutter(max_chars=240)
    for index, fragment in enumerate(fragments):
        ready = cutter.add(fragment)
        assert bool(ready) == (index == ready_after), (index, fragment, ready)
    assert len(ready) == 1


def test_lower_case_after_a_period_keeps_the_sentence_going() -> None:
    cutter = SentenceCutter(max_chars=240)
    assert cutter.add("Prices rose approx.") == []
    assert cutter.add(" five percent. Then") == [
        Piece("Prices rose approx. five percent.", 0, 33, "Prices rose approx. five percent.")
    ]


def test_flush_speaks_the_buffer_mid_sentence_and_spans_continue() -> None:
    cutter = SentenceCutter(max_chars=240)
    assert cutter.add("Half a sente") == []
    assert cutter.flush() == [Piece("Half a sente", 0, 12, "Half a sente")]
    assert cutter.add("nce, then more.  Done") == [
        Piece("nce, then more.", 12, 27, "nce, then more.")
    ]
    assert cutter.flush() == [Piece("Done", 29, 33, "Done")]
    assert cutter.received == 33


def test_a_growing_sentence_longer_than_the_limit_leaves_in_pieces_early() -> None:
    cutter = SentenceCutter(max_chars=20)
    ready = cutter.add("one two three four five six seven eight")
    assert ready and all(len(p.source) <= 20 for p in ready)
    assert cutter.buffered < 39  # the last piece may still grow; it waits
    rest = cutter.flush()
    assert " ".join(p.text for p in ready + rest) == "one two three four five six seven eight"


def test_normalises_what_the_engine_gets_but_spans_point_at_the_text_as_sent() -> None:
    text = "Tab\there,\u200b  zero width.  Next"
    pieces = cut([text])
    assert pieces[0].text == "Tab here, zero width."
    assert pieces[0].source == "Tab\there,\u200b  zero width."
    assert_spans(text, pieces)


def test_nothing_to_say_is_skipped() -> None:
    assert cut(["... — !!! "]) == []
    assert [p.text for p in cut(["Hi. ... — Bye."])] == ["Hi.", "— Bye."]


def test_hostile_marks_are_refused_naming_the_field() -> None:
    cutter = SentenceCutter(max_chars=240, field="text")
    cutter.add("Z" + "\u0336" * (MAX_MARKS_PER_CHARACTER + 1) + "algo. ")
    with pytest.raises(InvalidArgument) as caught:
        cutter.add("Next")
    assert caught.value.field == "text"
