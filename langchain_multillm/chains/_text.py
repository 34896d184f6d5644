"""Where text may be cut: sentence ends, line ends and speaker turns."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from itertools import pairwise

__all__ = ["merge", "pieces_within", "sentence_cuts", "split_sentences", "split_speakers"]

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


def pieces_within(text: str, cap: int, size: Callable[[str], int]) -> list[str]:
    """``text`` as sentences, a sentence over ``cap`` (by ``size``) cut between words.

    ``size`` is ``len`` for characters or a token counter; a single word over ``cap`` is cut
    between characters.
    """
    out: list[str] = []
    for sentence in split_sentences(text):
        n = size(sentence)
        if n <= cap:
            out.append(sentence)
            continue
        words = sentence.split()
        if len(words) == 1:  # one long word: cut between characters, in proportion
            step = max(1, len(sentence) * cap // n)
            out.extend(sentence[i : i + step] for i in range(0, len(sentence), step))
            continue
        start = 0
        while start < len(words):
            step = max(1, (len(words) - start) * cap // max(size(" ".join(words[start:])), 1))
            while step > 1 and size(" ".join(words[start : start + step])) > cap:
                step = max(1, step * 3 // 4)
            piece = " ".join(words[start : start + step])
            out.extend(pieces_within(piece, cap, size) if size(piece) > cap else [piece])
            start += step
    return out


def merge(pieces: Sequence[tuple[str, int]], cap: int, sep: str) -> list[str]:
    """Consecutive ``(text, size)`` pieces joined by ``sep`` while their sizes add up to <= cap.

    A piece over ``cap`` on its own stays one chunk.
    """
    merged: list[str] = []
    current: list[str] = []
    used = 0
    for text, n in pieces:
        if current and used + n > cap:
            merged.append(sep.join(current))
            current, used = [], 0
        current.append(text)
        used += n
    if current:
        merged.append(sep.join(current))
    return merged
