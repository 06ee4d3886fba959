"""Cutting text into sentences while it is still arriving (an LLM's output, fragment by
fragment), so each sentence can be spoken as soon as it is complete.

The turn's text is every fragment joined as sent. ``SentenceCutter`` keeps what has not
been handed out yet and hands out a sentence once its end is *certain*: the end rule is
``voiceslot.text.sentence_ends`` (the one ``pieces_to_speak`` cuts whole texts by), and an
end is certain only when what follows it can no longer change the verdict:

- "3." may become "3.5", "Dr." may go on " Smith", "approx." may go on " five": a lone
  "." ends a sentence for sure only once the next word's first character has arrived
  (a lower-case letter there means an abbreviation, as in whole texts);
- "!", "?", "…", "。" and runs like "?!" cannot be abbreviations, but more of the run or a
  closing quote may still come: certain once any character follows.

``flush`` hands out everything buffered, mid-sentence or not, and is how a turn ends. A
sentence longer than the engine's limit is cut as ``voiceslot.text.fit_piece`` cuts it;
while such a sentence is still growing, the pieces before its last one are handed out
early (its last piece may still grow). Every piece carries its place in the turn's text
in code points, ``[start, end)``. Pieces with nothing to say ("...", "—") are skipped,
never sent to an engine.

Pure: no I/O; errors are ``voiceslot.errors.InvalidArgument``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from voiceslot.text import fit_piece, sentence_ends, speaks, validate_text

_NEXT_WORD = re.compile(r"\s*\S")


@dataclass(frozen=True)
class Piece:
    """One piece of a turn's text for an engine."""

    text: str
    """What the engine is given: the turn's text in ``[start, end)``, normalised."""
    start: int
    """Code-point offset in the turn's text (all fragments joined as sent)."""
    end: int
    source: str
    """The turn's text in ``[start, end)`` exactly as sent."""


class SentenceCutter:
    """The turn's text, fragment by fragment, out as pieces for an engine (see the module
    docstring). ``add`` and ``flush`` return the pieces that became ready, in order."""

    def __init__(self, *, max_chars: int, field: str = "text") -> None:
        if max_chars < 1:
            raise ValueError(f"max_chars must be at least 1, not {max_chars}")
        self.max_chars = max_chars
        self.field = field
        self._buffer = ""
        self._offset = 0  # the turn offset of _buffer[0]

    @property
    def buffered(self) -> int:
        """Characters received and not handed out yet."""
        return len(self._buffer)

    @property
    def received(self) -> int:
        """Characters received in this turn so far."""
        return self._offset + len(self._buffer)

    def add(self, fragment: str) -> list[Piece]:
        """Append ``fragment``; the pieces whose end became certain with it."""
        self._buffer += fragment
        return self._cut(final=False)

    def flush(self) -> list[Piece]:
        """Everything buffered, as pieces, whether its sentence has ended or not."""
        return self._cut(final=True)

    def _cut(self, *, final: bool) -> list[Piece]:
        buffer = self._buffer
        pieces: list[Piece] = []
        start = 0
        for match in sentence_ends(buffer):
            if not final and not _certain(buffer, match):
                break
            pieces.extend(self._pieces(buffer, start, match.end()))
            start = match.end()
        if final:
            pieces.extend(self._pieces(buffer, start, len(buffer)))
            start = len(buffer)
        elif len(buffer) - start > self.max_chars:
            # A sentence longer than an engine takes, still growing: its pieces but the
            # last (which may still grow) can go now.
            early = fit_piece(buffer[start:], max_chars=self.max_chars)[:-1]
            if early:
                last = start
                for part in early:
                    last = buffer.index(part, last) + len(part)
                pieces.extend(self._pieces(buffer, start, last))
                start = last
        self._buffer = buffer[start:]
        self._offset += start
        return pieces

    def _pieces(self, buffer: str, start: int, end: int) -> list[Piece]:
        """The engine pieces of ``buffer[start:end]`` (one sentence, or the rest)."""
        out: list[Piece] = []
        at = start
        for part in fit_piece(buffer[start:end], max_chars=self.max_chars):
            at = buffer.index(part, at)
            if speaks(part):
                # The rules a whole text is checked by (invisible characters, stacked
                # marks); the length was cut to fit above, normalising only shortens
                # (but for rare NFC expansions, hence the slack).
                text = validate_text(part, max_chars=2 * self.max_chars, field=self.field)
                out.append(
                    Piece(text, self._offset + at, self._offset + at + len(part), source=part)
                )
            at += len(part)
        return out


def _certain(buffer: str, match: re.Match[str]) -> bool:
    """Whether the sentence end ``match`` stays one whatever text comes next."""
    if _NEXT_WORD.match(buffer, match.end()):
        return True
    return match.group() != "." and match.end() < len(buffer)
