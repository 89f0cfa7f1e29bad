"""A document too long for ``max_length`` -> windows of its text that each fit whole.

``long_documents="chunk"`` scores such a document as overlapping windows and keeps its best
window (Cohere's rerank does the same; vLLM's and TEI's score APIs truncate). A window is a
span ``text[start:end]`` of the document, and it is scored exactly as the model card scores a
document of that text: its ids are the ids of ``format_tail(text[start:end])``, tokenized on
their own, never a slice of someone else's ids. So every window's score can be checked
against the recipe, and ``best_span`` shows the caller the very text that earned the score.

Where the cuts fall: on token boundaries of the whole document's tokenization (so a window
holds about as many tokens as planned), only where the boundary splits no character (byte
pieces of one character, e.g. a CJK character or an emoji over two byte tokens, share their
character's offsets) and no grapheme (no combining mark, ZWJ, variation selector, emoji
modifier or regional-indicator pair is cut from what it joins, nor CR from LF), preferring
the start of a word. Each window is then tokenized on its own and shrunk if its own ids do
not fit (rare: the ids at a cut can differ from the whole document's by a token or two).

Consecutive windows share at least ``overlap`` tokens, so a passage shorter than the overlap
lies whole in at least one window; the last window starts early enough to be a full one.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

from .config import DEFAULT_CHUNK_OVERLAP
from .tokenization import PromptEncoder

# A window must leave room for at least this many document tokens: below it, windows would
# be mostly prompt template and the cost per document token absurd.
MIN_WINDOW_TOKENS = 32
# Tokens a window is planned short of the room, so that its own ids (which can differ from
# the whole document's near a cut) still fit; doubled for a window that did not fit.
FIT_MARGIN_TOKENS = 8


@dataclass(frozen=True)
class Window:
    start: int  # character span of the window in the document: text[start:end]
    end: int
    ids: tuple[int, ...]  # its prompt ids after the shared context (tail, then SUFFIX)


def effective_overlap(overlap: int | None, window: int) -> int:
    """The overlap in tokens for a window of ``window`` document tokens; ``None`` is the
    default (:data:`DEFAULT_CHUNK_OVERLAP`, at most an eighth of the window)."""
    if window < MIN_WINDOW_TOKENS:
        raise ValueError(
            f"max_length leaves {window} tokens for a document after the prompt (instruction "
            f'and query included); long_documents="chunk" needs at least {MIN_WINDOW_TOKENS}: '
            "raise max_length or shorten the query/instruction"
        )
    if overlap is None:
        return min(DEFAULT_CHUNK_OVERLAP, window // 8)
    if overlap >= window:
        raise ValueError(
            f"chunk_overlap must be less than the window, {window} tokens here (max_length "
            f"minus the prompt around the document), got {overlap}"
        )
    return overlap


def split(encoder: PromptEncoder, text: str, room: int, overlap: int) -> Iterator[Window]:
    """The windows of ``text``, in order, each with at most ``room`` tail ids.

    ``overlap`` must be less than ``room`` (see :func:`effective_overlap`). A generator, so
    that the caller can stop at a token limit before the rest is tokenized.
    """
    cuts = _Cuts(text, encoder.tail_starts(text))
    n = cuts.tokens
    start = 0  # token index where the window starts
    margin = min(FIT_MARGIN_TOKENS, room // 4)
    while True:
        span = room - margin
        end = n if start + span >= n else cuts.before(start + span, start, lookback=span // 8)
        if end is None:
            raise ValueError(f"no place to cut the document within {span} tokens")
        a, b = cuts.position(start), cuts.position(end)
        (ids,), (cut,) = encoder.encode_tails([text[a:b]], room)
        if cut:  # its own ids are longer than planned: plan it shorter
            if margin >= room - 1:
                raise ValueError("a window's text does not fit max_length on its own")
            margin = min(2 * margin, room - 1)
            continue
        yield Window(a, b, ids)
        if end == n:
            return
        target = end - overlap
        if n - target <= span:  # the next window is the last: make it a full one
            target = min(target, n - span)
        target = max(target, start + 1)
        start = cuts.before(target, start, lookback=max(overlap // 8, 1)) or end
        margin = min(FIT_MARGIN_TOKENS, room // 4)


class _Cuts:
    """Token boundaries of one document where a window may start or end."""

    def __init__(self, text: str, starts: list[int]) -> None:
        self.text = text
        self.starts = starts  # per token of the document: the character it starts at
        self.tokens = len(starts)

    def position(self, k: int) -> int:
        """Character position of the boundary before token ``k`` (0 and len(text) at the ends)."""
        if k == 0:
            return 0
        return len(self.text) if k >= self.tokens else self.starts[k]

    def rank(self, k: int) -> int:
        """2: a word starts at token ``k``; 1: a clean cut; 0: no cut here."""
        p = self.position(k)
        if not 0 < p < len(self.text) or self.starts[k - 1] >= p:
            return 0  # a piece of the previous token's character (byte-level BPE)
        before, after = self.text[p - 1], self.text[p]
        if not _clean(before, after):
            return 0
        return 2 if before.isspace() and not after.isspace() else 1

    def before(self, k: int, floor: int, *, lookback: int) -> int | None:
        """The best cut in ``(floor, k]``: a word start within ``lookback`` tokens of ``k``,
        else the nearest clean cut, else None."""
        for j in range(k, max(k - lookback, floor), -1):
            if self.rank(j) == 2:
                return j
        for j in range(k, floor, -1):
            if self.rank(j):
                return j
        return None


def _clean(before: str, after: str) -> bool:
    """A cut between ``before`` and ``after`` leaves both graphemes whole (conservative)."""
    if before == "\r" and after == "\n":
        return False
    if before == _ZWJ or _joins_previous(after):
        return False
    return not (_regional(before) and _regional(after))


_ZWJ = "\u200d"


def _joins_previous(ch: str) -> bool:
    """Characters that attach to the one before them: marks, joiners, variation selectors,
    emoji modifiers and tags, conjoining Hangul vowels and trailing consonants."""
    cp = ord(ch)
    return (
        unicodedata.combining(ch) != 0
        or unicodedata.category(ch)[0] == "M"
        or ch in "\u200c\u200d"
        or 0xFE00 <= cp <= 0xFE0F
        or 0xE0100 <= cp <= 0xE01EF
        or 0x1F3FB <= cp <= 0x1F3FF
        or 0xE0020 <= cp <= 0xE007F
        or 0x1160 <= cp <= 0x11FF
        or 0xD7B0 <= cp <= 0xD7FF
    )


def _regional(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF
