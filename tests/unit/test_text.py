"""Text normalisation, validation, sentence splitting and batch item names."""

from __future__ import annotations

import random
import re
import unicodedata

import pytest

from voiceslot.errors import InvalidArgument
from voiceslot.text import (
    MAX_MARKS_PER_CHARACTER,
    character_spans,
    normalize,
    pieces_to_speak,
    split_sentences,
    validate_item_name,
    validate_text,
)


def squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


def assert_lossless(text: str, pieces: list[str], max_chars: int) -> None:
    """The splitting contract: pieces are stripped, non-empty, within the limit, and
    together are the text but for whitespace, in order."""
    assert squeeze("".join(pieces)) == squeeze(text)
    for piece in pieces:
        assert piece and piece == piece.strip()
        assert len(piece) <= max_chars, piece


# --- normalize -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  hello   world  ", "hello world"),
        ("line one\nline two\r\nline three", "line one line two line three"),
        ("tab\tseparated", "tab separated"),
        ("bare\rreturn", "bare return"),  # a lone CR separates words; it must not glue them
        ("nul\x00byte\x07bell\x1bescape", "nulbytebellescape"),
        ("zero\u200bwidth\ufeffbom", "zerowidthbom"),
        ("no\u00a0break\u3000ideographic", "no break ideographic"),
        ("e\u0301", "\u00e9"),  # NFC composes
        ("\u202eevil", "evil"),  # bidi override
        ("family \U0001f468\u200d\U0001f469", "family \U0001f468\u200d\U0001f469"),  # ZWJ kept
        ("\n\t \x00", ""),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


def test_normalize_removes_lone_surrogates() -> None:
    assert normalize("a\ud800b") == "ab"


def test_normalize_is_idempotent() -> None:
    rng = random.Random(7)
    alphabet = "ab \t\n\r\x00\u200b\u00a0e\u0301。.,!"
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        once = normalize(text)
        assert normalize(once) == once


# --- validate_text ---------------------------------------------------------------------


def test_validate_text_returns_normalised_text() -> None:
    assert validate_text("  Hello\n world ", max_chars=20) == "Hello world"


@pytest.mark.parametrize("raw", ["", "   ", "\n\t", "\x00\u200b"])
def test_validate_text_rejects_empty(raw: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_text(raw, max_chars=10, field="items[3].text")
    assert info.value.field == "items[3].text"
    assert "empty" in info.value.description


def test_validate_text_rejects_over_limit_naming_it_and_never_truncates() -> None:
    assert validate_text("x" * 10, max_chars=10) == "x" * 10
    with pytest.raises(InvalidArgument) as info:
        validate_text("x" * 11, max_chars=10)
    assert info.value.field == "text"
    assert "10" in info.value.description and "11" in info.value.description


def test_validate_text_counts_after_normalising() -> None:
    # Whitespace that normalisation collapses does not count against the limit.
    assert validate_text("a" + " " * 50 + "b", max_chars=3) == "a b"


@pytest.mark.parametrize("marks", [1000, 2000, 4000])
def test_a_letter_stacked_with_accents_is_refused_quickly(marks: int) -> None:
    # "a" + N x U+0301 is under the 5000-character limit, yet it was cut into hundreds of
    # one-mark "sentences": minutes of audio, or no answer at all (issue 15).
    with pytest.raises(InvalidArgument) as info:
        validate_text("a" + "\u0301" * marks, max_chars=5000)
    assert info.value.field == "text"
    assert "combining marks" in info.value.description


def test_marks_per_character_limit_is_exact() -> None:
    # "x" has no precomposed accented forms, so NFC leaves every mark in place.
    ok = "x" + "\u0301\u0302\u0303\u0304" * (MAX_MARKS_PER_CHARACTER // 4)
    assert validate_text(f"{ok} and more", max_chars=100) == normalize(f"{ok} and more")
    with pytest.raises(InvalidArgument):
        validate_text(ok + "\u0305", max_chars=100)


@pytest.mark.parametrize(
    "text",
    [
        "Vi\u1ec7t Nam \u0111\u1eb9p l\u1eafm.",  # Vietnamese: two marks on a letter
        "\u05e9\u05c1\u05b8\u05c1\u05d1",  # Hebrew with points
        "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family",  # ZWJ emoji
        "\U0001f44d\U0001f3fd ok",  # emoji with a skin tone
        "\u0915\u094d\u0937\u093f\u0924\u093f",  # Devanagari conjunct and vowel signs
    ],
)
def test_real_writing_keeps_its_marks(text: str) -> None:
    assert validate_text(text, max_chars=100) == normalize(text)


def test_character_spans_group_marks_joiners_and_modifiers() -> None:
    text = "e\u0301x\U0001f469\u200d\U0001f467\U0001f44d\U0001f3fd"
    assert [text[a:b] for a, b in character_spans(text)] == [
        "e\u0301",
        "x",
        "\U0001f469\u200d\U0001f467",
        "\U0001f44d\U0001f3fd",
    ]
    assert character_spans("") == []


def test_text_far_over_the_limit_is_refused_before_normalising() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_text("x" * 200_000, max_chars=5000)
    assert "before normalising" in info.value.description


# --- split_sentences -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
        ("Dr. Smith met Mr. Jones. They talked.", ["Dr. Smith met Mr. Jones.", "They talked."]),
        ("Use tools, e.g. hammers. Or i.e. not.", ["Use tools, e.g. hammers.", "Or i.e. not."]),
        (
            "Pi is about 3.14 today. It was 2.5 yesterday.",
            ["Pi is about 3.14 today.", "It was 2.5 yesterday."],
        ),
        ("J. R. R. Tolkien wrote. Then slept.", ["J. R. R. Tolkien wrote.", "Then slept."]),
        ("It costs approx. five euros. Fine.", ["It costs approx. five euros.", "Fine."]),
        ("She lives in the U.S. now. Really.", ["She lives in the U.S. now.", "Really."]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        ("Wait... What?! No.", ["Wait...", "What?!", "No."]),
        ("你好。我很好！你呢？好", ["你好。", "我很好！", "你呢？", "好"]),
        ("「行こう。」と言った。", ["「行こう。」", "と言った。"]),
        ("No terminal punctuation", ["No terminal punctuation"]),
        ("", []),
        ("   ", []),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_long_sentence_splits_at_clauses_first() -> None:
    text = "first clause here, second clause here; third clause here: fourth clause here"
    pieces = split_sentences(text, max_chars=40)
    assert pieces == [
        "first clause here, second clause here;",
        "third clause here: fourth clause here",
    ]


def test_long_clause_splits_between_words() -> None:
    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa"
    pieces = split_sentences(text, max_chars=20)
    assert pieces == ["alpha beta gamma", "delta epsilon zeta", "eta theta iota kappa"]


def test_long_word_is_cut_between_characters() -> None:
    pieces = split_sentences("short " + "x" * 25, max_chars=10)
    assert pieces == ["short", "x" * 10, "x" * 10, "x" * 5]


def test_hard_cut_keeps_combining_marks_with_their_letter() -> None:
    word = "e\u0301" * 6  # decomposed on purpose: 12 code points
    pieces = split_sentences(word, max_chars=5)
    assert_lossless(word, pieces, 5)
    assert all(not piece.startswith("\u0301") for piece in pieces)


def test_hard_cut_never_strands_marks_of_a_full_character() -> None:
    text = ("a" + "\u0301" * MAX_MARKS_PER_CHARACTER) * 40
    pieces = split_sentences(text, max_chars=240)
    assert_lossless(text, pieces, 240)
    assert len(pieces) == 3  # 680 code points in runs of whole characters
    assert all(not unicodedata.category(piece[0]).startswith("M") for piece in pieces)


def test_pieces_with_nothing_to_say_join_a_neighbour() -> None:
    assert split_sentences("Wait . . . What ?! . No.") == ["Wait . . .", "What ?! .", "No."]
    assert split_sentences("... Hello.") == ["... Hello."]
    # Thousands of lone periods after one word: a handful of engine calls, not thousands.
    text = "a" + " ." * 2000
    pieces = split_sentences(text, max_chars=240)
    assert_lossless(text, pieces, 240)
    assert len(pieces) <= 4000 // 240 + 1


@pytest.mark.parametrize("text", ["...", "!!! ???", "\U0001f44d", "\u2014 \u2014", "$%&"])
def test_text_with_no_letter_or_digit_has_nothing_to_say(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_text(text, max_chars=100)
    assert "nothing to say" in info.value.description


def test_an_engine_gets_only_pieces_that_say_something() -> None:
    # One letter and 2,000 lone periods: one engine call, not a dozen calls reading noise.
    assert pieces_to_speak("a" + " ." * 2000, max_chars=240) == ["a" + " ." * 119]
    assert pieces_to_speak("Hi. ... Bye.", max_chars=240) == ["Hi. ...", "Bye."]
    assert pieces_to_speak("\u4f60\u597d\u3002123", max_chars=240) == ["\u4f60\u597d\u3002", "123"]


def test_cjk_without_punctuation_or_spaces_is_cut_by_characters() -> None:
    text = "我" * 23
    assert split_sentences(text, max_chars=10) == ["我" * 10, "我" * 10, "我" * 3]


@pytest.mark.parametrize("max_chars", [1, 2, 3, 7, 16, 50, 250])
def test_split_is_lossless_on_random_text(max_chars: int) -> None:
    rng = random.Random(max_chars)
    words = [
        "Dr.",
        "e.g.",
        "3.5",
        "word",
        "longerword",
        "x" * 40,
        "end.",
        "why?",
        "yes!",
        "clause,",
        "semi;",
        "你好。",
        "好！",
        "U.S.",
        "—",
        "a",
        "…",
    ]
    for _ in range(100):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 40)))
        assert_lossless(text, split_sentences(text, max_chars=max_chars), max_chars)


def test_split_keeps_every_piece_within_default_limit() -> None:
    text = ("This sentence is rather long, and it keeps going; " * 20).strip()
    pieces = split_sentences(text)
    assert len(pieces) > 1
    assert_lossless(text, pieces, 250)


def test_split_rejects_nonpositive_limit() -> None:
    with pytest.raises(ValueError):
        split_sentences("text", max_chars=0)


# --- validate_item_name ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["a", "intro", "chapter-01_final.v2", "A" * 128, "_x", "-x", "a..b"]
)
def test_valid_item_names(name: str) -> None:
    assert validate_item_name(name, field="items[0].name") == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        ".hidden",
        "../x",
        "a/b",
        "a\\b",
        "/abs",
        "a\x00b",
        "a b",
        "name\n",
        "A" * 129,
        "caf\u00e9",
        "\u0430dmin",  # Cyrillic а: looks like "admin"
        "a\u200bb",
        "ａｂｃ",  # fullwidth letters
        "x\u2215y",  # division slash, looks like "/"
    ],
)
def test_hostile_item_names_are_rejected(name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_item_name(name, field="items[7].name")
    assert info.value.field == "items[7].name"
    assert info.value.description
