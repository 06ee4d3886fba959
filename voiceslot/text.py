"""Text handling before synthesis: normalising what callers send, checking it, and cutting
it into pieces an engine speaks well.

Providers and the local engine read one sentence or a short run of sentences at a time;
long inputs are split here, once, so every engine gets the same pieces. Splitting only
ever cuts: it never drops, reorders or rewrites a character other than the whitespace at
the cuts, so the pieces read back in order are the text. It prefers sentence ends, then
clause punctuation, then spaces, and cuts inside a word only when a word alone is longer
than the limit.

Pure: no I/O; errors are ``voiceslot.errors.InvalidArgument``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator

import regex

from voiceslot.errors import InvalidArgument

# --- normalising -----------------------------------------------------------------------

# Zero-width (non-)joiners change how scripts such as Persian, Hindi and emoji sequences
# are written, so they stay; every other invisible format character goes.
_KEPT_FORMAT_CHARS = frozenset("\u200c\u200d")
_WHITESPACE = re.compile(r"\s+")


class _CleanTable(dict[int, int | None]):
    """``str.translate`` table that decides each code point on first sight: control
    characters that separate (tab, newline, …) become spaces, other control, format and
    lone surrogate characters are removed, everything else stays."""

    def __missing__(self, code: int) -> int | None:
        ch = chr(code)
        category = unicodedata.category(ch)
        if category == "Cc":
            result: int | None = 0x20 if ch.isspace() else None
        elif category in ("Cf", "Cs") and ch not in _KEPT_FORMAT_CHARS:
            result = None
        else:
            result = code
        self[code] = result
        return result


_CLEAN = _CleanTable()


# --- characters as people see them ------------------------------------------------------

MAX_MARKS_PER_CHARACTER = 16
"""Combining marks and joiners one character may carry. Real writing needs a few
(Vietnamese two, Hebrew with cantillation or Tibetan stacks four or five, an emoji family
six); "Zalgo" text stacks thousands on one letter, which an engine reads as thousands of
sounds. Unicode's stream-safe format (UAX #15) caps the same thing at 30."""
RAW_CHARS_PER_CHAR = 4
RAW_CHARS_SLACK = 65536
"""Text longer than ``RAW_CHARS_PER_CHAR`` times the limit plus ``RAW_CHARS_SLACK`` before
normalising is refused unread: normalising (whitespace runs, invisible characters) does not
shrink honest text that much, and the work done on a request stays bounded by its limit."""

# Unicode's extended grapheme clusters (UAX #29) as the `regex` library implements them,
# kept current with each Unicode release; the standard library has no segmentation.
_CHARACTER = regex.compile(r"\X")


def character_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each user-perceived character of ``text`` (an extended grapheme
    cluster: a letter with its marks, an emoji sequence joined by zero-width joiners, a
    flag, a Hangul syllable)."""
    return [m.span() for m in _CHARACTER.finditer(text)]


def _check_marks(text: str, field: str) -> None:
    for start, end in character_spans(text):
        if end - start - 1 > MAX_MARKS_PER_CHARACTER:
            raise InvalidArgument(
                field,
                f"the character at position {start} carries {end - start - 1} combining marks "
                f"or joiners; at most {MAX_MARKS_PER_CHARACTER} per character are accepted",
            )


def normalize(text: str) -> str:
    """NFC, control and invisible format characters removed (tabs and line breaks become
    spaces), runs of whitespace collapsed to one space, ends stripped."""
    cleaned = unicodedata.normalize("NFC", text.translate(_CLEAN))
    return _WHITESPACE.sub(" ", cleaned).strip()


def validate_text(text: str, *, max_chars: int, field: str = "text") -> str:
    """``text`` normalised; ``InvalidArgument`` when nothing is left, when it is longer
    than ``max_chars`` characters, when a character carries more than
    ``MAX_MARKS_PER_CHARACTER`` combining marks, or when it has no letter or digit to
    speak. Never truncates: a cut sentence would be spoken wrong.

    The limits apply to the normalised text, so the work an engine is given follows from
    what the text says, not from how it was encoded."""
    if len(text) > RAW_CHARS_PER_CHAR * max_chars + RAW_CHARS_SLACK:
        raise InvalidArgument(
            field, f"is {len(text)} characters long before normalising; the limit is {max_chars}"
        )
    normalized = normalize(text)
    if not normalized:
        raise InvalidArgument(field, "is empty")
    if len(normalized) > max_chars:
        raise InvalidArgument(
            field, f"is {len(normalized)} characters long; the limit is {max_chars}"
        )
    _check_marks(normalized, field)
    if not _speaks(normalized):
        raise InvalidArgument(field, "has nothing to say: no letters or digits")
    return normalized


# --- splitting -------------------------------------------------------------------------

_CLOSERS = "\"'”’»)\\]」』）】"
# A sentence ends at . ! ? … (with any closing quotes or brackets) before whitespace or
# the end, or at 。！？ where no space follows in Chinese and Japanese.
_SENTENCE_END = re.compile(rf"[.!?…]+[{_CLOSERS}]*(?=\s|$)|[。！？]+[{_CLOSERS}]*")
_LAST_WORD = re.compile(r"\S+$")
_NEXT_CHAR = re.compile(r"\s*(\S)")
_OPENERS = "\"'“‘«([{"
# Words that end in a period without ending the sentence: titles before names and Latin
# abbreviations. Single letters (initials) and dotted forms (e.g., U.S.) are found by rule.
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc", "cf", "approx"}
)
_CLAUSE_BREAK = re.compile(r"(?<=[,;:，；：、—–])")
_WORD_BREAK = re.compile(r"(?<=\s)(?=\S)")


def split_sentences(text: str, *, max_chars: int = 250) -> list[str]:
    """Cut ``text`` into stripped, non-empty pieces of at most ``max_chars`` characters.

    Sentences first (``.``/``!``/``?``/``…`` before a space, and ``。！？``), keeping
    abbreviations such as "Dr." and "e.g." and decimals such as "3.5" whole; a sentence
    still too long is cut at clause punctuation, then between words, then, for a single
    word longer than ``max_chars``, between characters. Joined back together the pieces
    are ``text`` but for whitespace.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, not {max_chars}")
    pieces: list[str] = []
    for sentence in _sentences(text):
        pieces.extend(_fit(sentence, max_chars, _SPLITTERS))
    return _join_unspoken(pieces, max_chars)


def pieces_to_speak(text: str, *, max_chars: int) -> list[str]:
    """What an engine is given for ``text``, in order: ``split_sentences``'s pieces less
    those with nothing to say. Those join a neighbour where they fit; a run of them
    longer than a piece ("a" and then 2,000 " .") is left out, as an engine would only
    read noise into it, one call per piece. Text with nothing to say at all is refused
    by ``validate_text`` before this."""
    return [p for p in split_sentences(text, max_chars=max_chars) if _speaks(p)]


def _speaks(piece: str) -> bool:
    """Whether ``piece`` has anything to say: a letter or a digit in any script."""
    return any(ch.isalnum() for ch in piece)


def _join_unspoken(pieces: list[str], max_chars: int) -> list[str]:
    """Pieces with nothing to say ("...", "—", a lone "!") joined to a neighbour where it
    fits: each is otherwise an engine call of its own, and "a. . . . ." would be thousands
    of calls for one word (or an engine error for returning no audio)."""
    joined: list[str] = []
    for piece in pieces:
        if joined and not (_speaks(piece) and _speaks(joined[-1])):
            merged = f"{joined[-1]} {piece}"
            if len(merged) <= max_chars:
                joined[-1] = merged
                continue
        joined.append(piece)
    return joined


def sentence_ends(text: str) -> Iterator[re.Match[str]]:
    """Where the sentences of ``text`` end (each match covers the end punctuation and any
    closing quotes or brackets), abbreviations and decimals excluded. The one rule both
    ``split_sentences`` and the incremental cutter (``voiceslot.text_stream``) cut by."""
    for match in _SENTENCE_END.finditer(text):
        if not _is_abbreviation(text, match):
            yield match


def fit_piece(text: str, *, max_chars: int) -> list[str]:
    """One sentence ``text`` as ``split_sentences`` gives it to an engine: stripped, in
    pieces of at most ``max_chars`` cut at clauses, then words, then characters. Each
    piece is a substring of ``text``."""
    return _fit(text, max_chars, _SPLITTERS)


def speaks(piece: str) -> bool:
    """Whether ``piece`` has anything to say: a letter or a digit in any script."""
    return _speaks(piece)


def _sentences(text: str) -> Iterator[str]:
    start = 0
    for match in sentence_ends(text):
        yield text[start : match.end()]
        start = match.end()
    yield text[start:]


def _is_abbreviation(text: str, match: re.Match[str]) -> bool:
    """Whether the lone period of ``match`` ends an abbreviation rather than a sentence."""
    if match.group() != ".":
        return False
    following = _NEXT_CHAR.match(text, match.end())
    if following and following.group(1).islower():
        return True  # "approx. five", "e.g. this": the sentence goes on
    before = _LAST_WORD.search(text, max(0, match.start() - 64), match.start())
    word = before.group().lstrip(_OPENERS).lower() if before else ""
    if not word:
        return False
    if word in _ABBREVIATIONS:
        return True
    letters = word.replace(".", "")
    # "J." (an initial), "e.g", "i.e", "U.S": letters with periods between them.
    return letters.isalpha() and (len(word) == 1 or "." in word)


def _by_clause(text: str) -> list[str]:
    return _CLAUSE_BREAK.split(text)


def _by_word(text: str) -> list[str]:
    return _WORD_BREAK.split(text)


def _by_character(text: str, max_chars: int) -> list[str]:
    """Runs of at most ``max_chars`` code points cut between characters (``character_spans``),
    so a mark or joiner stays with its letter; a single character longer than
    ``max_chars`` is cut by code points."""
    runs: list[str] = []
    start = end = 0
    for _, span_end in character_spans(text):
        if span_end - start <= max_chars:
            end = span_end
            continue
        if end > start:
            runs.append(text[start:end])
            start = end
        while span_end - start > max_chars:  # one character longer than a run
            runs.append(text[start : start + max_chars])
            start += max_chars
        end = span_end
    if end > start:
        runs.append(text[start:end])
    return runs


_SPLITTERS: tuple[Callable[[str], list[str]], ...] = (_by_clause, _by_word)


def _fit(text: str, max_chars: int, splitters: tuple[Callable[[str], list[str]], ...]) -> list[str]:
    """``text`` stripped, in pieces of at most ``max_chars``: cut with the first splitter,
    pack the parts greedily, and cut any part still too long with the next one."""
    stripped = text.strip()
    if len(stripped) <= max_chars:
        return [stripped] if stripped else []
    if not splitters:
        return _by_character(stripped, max_chars)
    pieces: list[str] = []
    for packed in _pack(splitters[0](stripped), max_chars):
        pieces.extend(_fit(packed, max_chars, splitters[1:]))
    return pieces


def _pack(parts: Iterable[str], max_chars: int) -> Iterator[str]:
    """Consecutive ``parts`` joined into runs of at most ``max_chars`` (stripped); a part
    longer than that on its own comes out alone."""
    current = ""
    for part in parts:
        if not current or len((current + part).strip()) <= max_chars:
            current += part
        else:
            yield current
            current = part
    if current:
        yield current


# --- names -----------------------------------------------------------------------------

_ITEM_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def validate_item_name(name: str, *, field: str = "name") -> str:
    """``name`` if it is a safe batch item name: 1..128 of ``A-Z a-z 0-9 . _ -``, not
    starting with ".". Such a name can be used as a file name or storage key segment
    as is: no separators, no "." or "..", no invisible or look-alike characters."""
    if _ITEM_NAME.fullmatch(name):
        return name
    if not name:
        reason = "is empty"
    elif len(name) > 128:
        reason = f"is {len(name)} characters long; the limit is 128"
    elif name.startswith("."):
        reason = 'must not start with "."'
    else:
        reason = "may contain only A-Z, a-z, 0-9, '.', '_' and '-'"
    raise InvalidArgument(field, reason)
