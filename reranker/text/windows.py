"""A document too long for ``max_length`` -> windows of its text that each fit whole.

``long_documents="chunk"`` scores such a document as overlapping windows and keeps its best
window (Cohere's rerank does the same; vLLM's and TEI's score APIs truncate).

* The first window is the truncation itself: the very ids ``long_documents="truncate"``
  scores (the recipe's), so a chunked document never scores below its truncation.
* Every later window is a span ``text[start:end]`` scored exactly as the model card scores a
  document of that text: its ids are those of ``format_tail(text[start:end])`` tokenized on
  their own, never a slice of someone else's ids. So every window's score can be checked
  against the recipe, and ``best_span`` shows the caller the very text that earned it (for
  the first window, the characters the truncation keeps whole).

Where the cuts fall: on token boundaries of the whole document's tokenization (so a window
holds about as many tokens as planned) that are extended grapheme cluster boundaries (the
Unicode rules, UAX #29, as the ``regex`` module's ``\\X`` implements them: no combining mark,
ZWJ sequence, flag, Hangul syllable or CR LF is cut), preferring the start of a word. Where
a stretch offers no grapheme boundary within reach (a run of combining marks longer than a
window), the cut falls between two characters of one grapheme: never inside a character.

Windows always advance: each starts after the previous one starts and ends after it ends,
none is empty, none lies inside another. Consecutive windows share at least ``overlap``
tokens (counted on the whole document's ids) wherever a clean cut lies in reach, which
ordinary text always offers when the overlap is a fraction of the window; so a passage
shorter than the overlap lies whole in some window. The last window starts early enough to
be a full one. A window is planned :data:`FIT_MARGIN_TOKENS` short of the room, since its
own ids can differ from the whole document's near a cut; one that still does not fit is
planned again, shorter.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import regex

from ..config import DEFAULT_CHUNK_OVERLAP
from .tokenization import PromptEncoder

# A window must leave room for at least this many document tokens: below it, windows would
# be mostly prompt template and the cost per document token absurd.
MIN_WINDOW_TOKENS = 32
# Tokens a window after the first is planned short of the room (at most a sixteenth of it),
# so that its own ids, which can differ from the whole document's by a token at either cut,
# still fit; doubled for a window that did not fit.
FIT_MARGIN_TOKENS = 4
# Windows tokenized per call.
BATCH_WINDOWS = 32
# How far at least a window reaches past the previous window's end: more than the byte
# tokens of one character (at most 4), so that there is a place to cut in between.
REACH_TOKENS = 8
# How far before its target a window's start may go back to start on a grapheme boundary.
START_SLACK_TOKENS = 8


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
    truncation: Sequence[int],
    starts: list[int] | None = None,
) -> Iterator[Window]:
    """The windows of ``text``, in order, each with at most ``room`` tail ids.

    ``truncation`` is the text's prompt ids as the recipe truncates them
    (``encoder.encode_tails([text], room)[0][0]``), the first window's; ``overlap`` must be
    less than ``room`` (see :func:`effective_overlap`); ``starts`` are
    ``encoder.tail_starts([text])[0]``, if the caller has them. A generator, so that the
    caller can stop at a token limit before the rest is tokenized; windows are tokenized
    :data:`BATCH_WINDOWS` at a time (one batched call spreads over the tokenizer's threads).
    """
    cuts = _Cuts(text, encoder.tail_starts([text])[0] if starts is None else starts)
    yield Window(0, cuts.position(room), tuple(truncation))
    if room >= cuts.tokens:
        return
    margin = max(1, min(FIT_MARGIN_TOKENS, room // 16))
    plans = cuts.plan(0, room, room - margin, room - margin, overlap)
    retry, retry_margin = None, margin  # the window planned again, and its margin
    while True:
        plan = list(itertools.islice(plans, BATCH_WINDOWS))
        spans = [(cuts.window_start(s), cuts.position(e)) for _, (s, e) in plan]
        tails, cut = encoder.encode_tails([text[a:b] for a, b in spans], room)
        for (previous, (_, e)), (a, b), ids, too_long in zip(plan, spans, tails, cut, strict=True):
            if too_long:  # its own ids are longer than planned: plan it again, shorter
                retry_margin = 2 * retry_margin if previous == retry else 2 * margin
                retry = previous
                plans = cuts.plan(*previous, room - retry_margin, room - margin, overlap)
                break
            yield Window(a, b, ids)
            if e == cuts.tokens:
                return


class _Cuts:
    """Token boundaries of one document where a window may start or end."""

    def __init__(self, text: str, starts: list[int]) -> None:
        self.text = text
        self.starts = starts  # per token of the document's tail: the character it starts at
        self.tokens = len(starts)
        self.graphemes = grapheme_boundaries(text)

    def position(self, k: int) -> int:
        """Character position of the boundary before token ``k`` (0 and len(text) at the ends)."""
        if k == 0:
            return 0
        return len(self.text) if k >= self.tokens else self.starts[k]

    def plan(
        self, start: int, end: int, first_span: int, span: int, overlap: int
    ) -> Iterator[tuple[tuple[int, int], tuple[int, int]]]:
        """The windows after ``[start, end)`` (in tokens), each as ``(previous, window)``;
        the first planned ``first_span`` tokens long at most, the others ``span``."""
        while end < self.tokens:
            previous = start, end
            start = self.next_start(start, end, span, overlap)
            end = self.end(start, end, first_span)
            if end is None:
                raise ValueError("a window's text does not fit max_length on its own")
            yield previous, (start, end)
            first_span = span

    def end(self, start: int, covered: int, span: int) -> int | None:
        """Where a window from ``start`` of at most ``span`` tokens ends: past ``covered``
        (the previous window's end) and past its own first character, on a grapheme
        boundary if one is in reach, else between two characters; None if neither is."""
        reach = start + span
        if reach >= self.tokens:
            return self.tokens
        opened, floor = self.window_start(start), covered
        while floor < reach and self.position(floor + 1) <= opened:
            floor += 1  # (floor, reach]: ends past the window's first character
        for least in (2, 1):
            end = self.before(reach, floor, span // 8, least)
            if end is not None:
                return end
        return None

    def next_start(self, start: int, end: int, span: int, overlap: int) -> int:
        """Where the window after ``[start, end)`` starts: after ``start`` (its text too),
        ``overlap`` tokens before ``end`` (more for the last window, which is made a full
        one), and early enough to reach :data:`REACH_TOKENS` past ``end``."""
        target = end - overlap
        if self.tokens - target <= span:
            target = min(target, self.tokens - span)
        floor = max(start, end - span + REACH_TOKENS)
        opened = self.window_start(start)
        while floor < end and self.window_start(floor + 1) <= opened:
            floor += 1  # (floor, end]: windows that start after this one's text starts
        latest = min(max(target, floor + 1), end)
        # A clean start is in reach within START_SLACK tokens before the target (or after
        # it); one further back would score the same text again (a grapheme longer than the
        # window: the start falls back inside it, as ends do, rather than at its start).
        near = max(floor, latest - max(overlap // 4, START_SLACK_TOKENS))
        for j in (
            self.before(latest, near, max(overlap // 8, 1), 2),
            self.after(max(target, floor), end),
            self.before(latest, near, 0, 1),
            self.before(latest, floor, 0, 2),
            self.before(latest, floor, 0, 1),
        ):
            if j is not None:
                return j
        return end  # the previous window's end: a cut already taken, so no worse

    def window_start(self, k: int) -> int:
        """Character where a window starting at token ``k`` starts: a single space that
        opens the token is left out, since the prompt puts one before the document (so the
        window reads "<Document>: word", as a document of that text would), unless what
        follows the space would not start a grapheme of its own."""
        p = self.position(k)
        if 0 < p < len(self.text) - 1 and self.text[p] == " " and self._opens_word(p + 1):
            return p + 1
        return p

    def _opens_word(self, p: int) -> bool:
        return bool(self.graphemes[p]) and not self.text[p].isspace()

    def rank(self, k: int) -> int:
        """How good a cut before token ``k`` is: 3 a word starts there (or after the one
        space there), 2 it is a grapheme boundary, 1 it splits a grapheme between two of
        its characters, 0 it splits a character (byte pieces of one share its offsets)."""
        p = self.position(k)
        if not 0 < p < len(self.text) or self.starts[k - 1] >= p:
            return 0
        if not self.graphemes[p]:
            return 1
        before, after = self.text[p - 1], self.text[p]
        if before.isspace() and self._opens_word(p):
            return 3  # e.g. after a newline
        # " word": the window leaves the space out (window_start) and starts at the word
        if after == " " and not before.isspace() and p + 1 < len(self.text):
            return 3 if self._opens_word(p + 1) else 2
        return 2

    def before(self, k: int, floor: int, lookback: int, least: int) -> int | None:
        """The best cut in ``(floor, k]`` of rank ``least`` or more: a word start within
        ``lookback`` tokens of ``k``, else the nearest; None if there is none."""
        candidates = range(min(k, self.tokens - 1), floor, -1)
        for j in candidates[:lookback]:
            if self.rank(j) == 3:
                return j
        return next((j for j in candidates if self.rank(j) >= least), None)

    def after(self, k: int, ceiling: int) -> int | None:
        """The nearest grapheme boundary in ``(k, ceiling)``, or None."""
        return next((j for j in range(k + 1, ceiling) if self.rank(j) >= 2), None)


def grapheme_boundaries(text: str) -> bytearray:
    """``b[p]`` is 1 where an extended grapheme cluster starts (and at ``len(text)``).

    Between two ASCII characters there is always a boundary but in CR LF, and no ASCII
    character joins a non-ASCII one before it, so ``regex``'s ``\\X`` runs only over the
    non-ASCII stretches (with one character of context each side, for a prefix like U+0600
    joining the digit after it). ``\\X`` takes time quadratic in a run of regional indicators
    (100k characters of flags: 30 s), so they are matched as a letter, which breaks from its
    neighbours exactly as a regional indicator does except from another one, and the pairs of
    each run (GB12, GB13: counted from the run's start) are joined here.
    """
    n = len(text)
    marks = bytearray(b"\x01") * (n + 1)
    for crlf in _CRLF.finditer(text):
        marks[crlf.start() + 1] = 0
    for stretch in _NON_ASCII.finditer(text):
        a, b = max(stretch.start() - 1, 0), min(stretch.end() + 1, n)
        marks[a + 1 : b] = bytes(b - a - 1)
        for m in _GRAPHEME.finditer(text[a:b].translate(_REGIONAL_AS_LETTER)):
            if m.start():  # the character before the stretch keeps its own mark
                marks[a + m.start()] = 1
    for run in _REGIONAL_RUN.finditer(text):
        pairs = range(run.start() + 1, run.end(), 2)
        marks[pairs.start : pairs.stop : 2] = bytes(len(pairs))
    return marks


_GRAPHEME = regex.compile(r"\X", regex.V1)
_CRLF = regex.compile("\r\n")
_NON_ASCII = regex.compile("[^\x00-\x7f]+")
_REGIONAL_RUN = regex.compile("[\U0001f1e6-\U0001f1ff]{2,}")
_REGIONAL_AS_LETTER = {cp: "A" for cp in range(0x1F1E6, 0x1F200)}
