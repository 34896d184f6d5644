"""Where text may be cut: sentence ends, line ends and speaker turns."""

from __future__ import annotations

import re
from itertools import pairwise

__all__ = ["sentence_cuts", "split_sentences", "split_speakers"]

# The end of a sentence (closing quotes and brackets included) or of a line.
_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])[\"'”’)\]]*(?=\s)|\n")

# A line that opens a speaker's turn in a transcript: "Alice:", "[00:01] Bob:", "DR. SMITH:".
_SPEAKER = re.compile(r"^[ \t]*(?:\[[^\]\n]{1,20}\][ \t]*)?[A-Z][\w .'-]{0,40}:[ \t]", re.M)


def sentence_cuts(text: str) -> list[int]:
    """The offsets at which ``text`` may be cut, shortest first (the whole text excluded)."""
    ends = {m.end() for m in _SENTENCE_END.finditer(text)}
    return sorted(e for e in ends if 0 < e < len(text.rstrip()) and text[:e].strip())


def split_sentences(text: str) -> list[str]:
    """``text`` as sentences (and lines), stripped, empty pieces left out."""
    starts = [0, *sentence_cuts(text), len(text)]
    pieces = (text[a:b].strip() for a, b in pairwise(starts))
    return [p for p in pieces if p]


def split_speakers(text: str) -> list[str] | None:
    """A transcript's speaker turns, or None when ``text`` does not read as a transcript.

    A transcript here has at least two speaker lines, and text before the first is short.
    """
    starts = [m.start() for m in _SPEAKER.finditer(text)]
    if len(starts) < 2 or len(text[: starts[0]].strip()) > 200:
        return None
    head = [text[: starts[0]].strip()] if text[: starts[0]].strip() else []
    turns = [text[a:b].strip() for a, b in zip(starts, [*starts[1:], len(text)], strict=False)]
    return head + [t for t in turns if t]
