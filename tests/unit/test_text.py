"""Text normalisation, validation, sentence splitting and batch item names."""

from __future__ import annotations

import random
import re

import pytest

from voiceslot.errors import InvalidArgument
from voiceslot.text import normalize, split_sentences, validate_item_name, validate_text


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
