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

Consecutive windows share at least ``overlap`` tokens (counted on the whole document's ids)
wherever a clean cut lies in reach, which ordinary text always offers when the overlap is a
fraction of the window; so a passage shorter than the overlap lies whole in some window. The
last window starts early enough to be a full one.
"""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

from ..config import DEFAULT_CHUNK_OVERLAP
from .tokenization import PromptEncoder

# A window must leave room for at least this many document tokens: below it, windows would
# be mostly prompt template and the cost per document token absurd.
MIN_WINDOW_TOKENS = 32
# Tokens a window is planned short of the room, so that its own ids (which can differ from
# the whole document's near a cut) still fit; doubled for a window that did not fit.
FIT_MARGIN_TOKENS = 8
# Windows tokenized per call.
BATCH_WINDOWS = 32
# How far at least a window reaches past the previous window's end: more than the byte
# tokens of one character (at most 4), so that there is a place to cut in between.
REACH_TOKENS = 8


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


def split(
    encoder: PromptEncoder,
    text: str,
    room: int,
    overlap: int,
    starts: list[int] | None = None,
) -> Iterator[Window]:
    """The windows of ``text``, in order, each with at most ``room`` tail ids.

    ``overlap`` must be less than ``room`` (see :func:`effective_overlap`); ``starts`` are
    ``encoder.tail_starts([text])[0]``, if the caller has them. A generator, so that the
    caller can stop at a token limit before the rest is tokenized; windows are tokenized
    :data:`BATCH_WINDOWS` at a time (one batched call spreads over the tokenizer's threads).
    Each window starts after the previous one, so there are fewer windows than tokens, and
    reaches past the previous one's end (the overlap is therefore at most the window minus a
    few tokens).
    """
    cuts = _Cuts(text, encoder.tail_starts([text])[0] if starts is None else starts)
    margin = min(FIT_MARGIN_TOKENS, room // 4)
    plans = cuts.plan(0, 0, room, overlap, margin, margin)
    retry, retry_margin = -1, margin  # the window planned again, and its margin
    while True:
        plan = list(itertools.islice(plans, BATCH_WINDOWS))
        spans = [(cuts.window_start(s), cuts.position(e)) for s, e, _ in plan]
        tails, cut = encoder.encode_tails([text[a:b] for a, b in spans], room)
        for (s, e, c), (a, b), ids, too_long in zip(plan, spans, tails, cut, strict=True):
            if too_long:  # its own ids are longer than planned: plan it again, shorter
                retry_margin = 2 * retry_margin if s == retry else 2 * margin
                if retry_margin >= room:
                    raise ValueError("a window's text does not fit max_length on its own")
                retry = s
                plans = cuts.plan(s, c, room, overlap, retry_margin, margin)
                break
            yield Window(a, b, ids)
            if e == cuts.tokens:
                return


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

    def plan(
        self, start: int, covered: int, room: int, overlap: int, first_margin: int, margin: int
    ) -> Iterator[tuple[int, int, int]]:
        """Windows ``(start, end, covered)`` in tokens from ``start`` on, ``covered`` being
        where the one before ended; the first planned ``first_margin`` short of ``room``."""
        span = room - first_margin
        while True:
            end = self.end(start, covered, span)
            yield start, end, covered
            if end == self.tokens:
                return
            start, covered, span = (
                self.next_start(start, end, room - margin, overlap),
                end,
                room - margin,
            )

    def end(self, start: int, covered: int, span: int) -> int:
        """Where a window from ``start`` of at most ``span`` tokens ends: past ``covered``
        (the last window's end) and splitting no grapheme, if it can be."""
        if start + span >= self.tokens:
            return self.tokens
        reach = start + span
        for least, floor in ((2, covered), (2, start), (1, covered), (1, start)):
            end = self.before(reach, max(floor, start), span // 8, least)
            if end is not None:
                return end
        raise ValueError(f"no place to cut the document within {span} tokens")

    def next_start(self, start: int, end: int, span: int, overlap: int) -> int:
        """Where the window after ``[start, end)`` starts: ``overlap`` tokens before ``end``
        (more for the last window, which is made a full one), after ``start``, and early
        enough to reach past ``end``."""
        target = end - overlap
        if self.tokens - target <= span:
            target = min(target, self.tokens - span)
        floor = max(start, end - span + REACH_TOKENS)
        for j in (
            self.before(max(target, floor + 1), floor, max(overlap // 8, 1), 2),
            self.after(max(target, start), end),
            self.before(max(target, floor + 1), floor, 0, 1),
        ):
            if j is not None:
                return j
        return end

    def window_start(self, k: int) -> int:
        """Character where a window starting at token ``k`` starts: a single space that
        opens the token is left out, since the prompt puts one before the document (so the
        window reads "<Document>: word", as a document of that text would)."""
        p = self.position(k)
        if 0 < p < len(self.text) - 1 and self.text[p] == " " and not self.text[p + 1].isspace():
            return p + 1
        return p

    def rank(self, k: int) -> int:
        """How good a cut before token ``k`` is: 3 a word starts there (or after the one
        space there), 2 it splits no grapheme, 1 it splits no character (only a run of marks
        longer than a window needs that), 0 it splits a character (byte pieces of one share
        its offsets): never."""
        p = self.position(k)
        if not 0 < p < len(self.text) or self.starts[k - 1] >= p:
            return 0
        before, after = self.text[p - 1], self.text[p]
        if not _clean(before, after):
            return 1
        if before.isspace() and not after.isspace():
            return 3  # e.g. after a newline
        # " word": the window leaves the space out (window_start) and starts at the word
        following = self.text[p + 1] if p + 1 < len(self.text) else " "
        return 3 if after == " " and not before.isspace() and not following.isspace() else 2

    def before(self, k: int, floor: int, lookback: int, least: int) -> int | None:
        """The best cut in ``(floor, k]`` of rank ``least`` or more: a word start within
        ``lookback`` tokens of ``k``, else the nearest; None if there is none."""
        candidates = range(min(k, self.tokens - 1), floor, -1)
        for j in candidates[:lookback]:
            if self.rank(j) == 3:
                return j
        return next((j for j in candidates if self.rank(j) >= least), None)

    def after(self, k: int, ceiling: int) -> int | None:
        """The nearest cut in ``(k, ceiling)`` that splits no grapheme, or None."""
        return next((j for j in range(k + 1, ceiling) if self.rank(j) >= 2), None)


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
