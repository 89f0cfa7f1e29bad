"""One rerank request: the value every caller builds (``RerankRequest``) and its tokens.

``RerankRequest.build`` is the only place a request's arguments are checked; predict.py, the
CLI, the service and ``Reranker.score/rank`` all build one and pass it on. ``prepare`` turns it
into a :class:`PreparedRequest` (identical documents tokenized and scored once) and checks the
token budget, the one limit that needs the tokenizer.

With ``long_documents="chunk"`` a document whose prompt would exceed ``max_length`` becomes
several prompts, its windows (:mod:`reranker.text.windows`); the prepared request maps prompts back
to documents, and a document's logit is that of its best window.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import Limits
from ..text.prompt import resolve_instruction
from ..text.tokenization import EncodedRequest, PromptEncoder
from ..text.windows import Window, effective_overlap, split
from ..validation import check_documents, check_text, check_token_budget
from .options import RerankOptions, spec, unknown


@dataclass(frozen=True)
class RerankRequest:
    """A validated request: the query, the documents and the options (:mod:`.options`).
    Build it with :meth:`build`, which checks every field."""

    query: str
    documents: tuple[str, ...]
    options: RerankOptions = field(default_factory=RerankOptions)

    @property
    def instruction(self) -> str:
        """The instruction the prompt uses: None (the default) is the model card's."""
        return resolve_instruction(self.options.instruction)

    @classmethod
    def build(cls, limits: Limits, *, query: Any, documents: Any, **options: Any) -> RerankRequest:
        """Check every field; raises ``ValueError`` whose message starts with the field's name
        (query, then the instruction, the documents and the other options)."""
        unknown(options)
        query = check_text("query", query, max_chars=limits.max_query_chars, allow_empty=False)
        if "instruction" in options:  # named before the documents, as callers expect
            spec("instruction").check("instruction", options["instruction"], limits)
        docs = check_documents(documents, limits)
        return cls(query, tuple(docs), RerankOptions.build(limits, **options))


@dataclass(frozen=True)
class PreparedRequest:
    """A request with token ids. Identical documents are tokenized and scored once.

    ``encoded.documents`` are the prompts to score: one per distinct document, or, for a
    chunked one, one per window, a document's prompts side by side.
    """

    request: RerankRequest
    inverse: list[int]  # request.documents[i] is distinct document inverse[i]
    encoded: EncodedRequest  # one entry per prompt
    # Chunked requests only: distinct document j's prompts are first[j]:first[j+1], and
    # spans[k] is prompt k's character span in its document.
    first: list[int] | None = None
    spans: list[tuple[int, int]] | None = None

    def prompts(self, i: int) -> range:
        """The prompts of document ``i`` (input order)."""
        j = self.inverse[i]
        return range(j, j + 1) if self.first is None else range(self.first[j], self.first[j + 1])

    def tokens(self, i: int) -> int:
        """Prompt tokens scored for document ``i`` (input order), every window's counted."""
        return sum(
            len(self.encoded.context) + len(self.encoded.documents[k]) for k in self.prompts(i)
        )

    def truncated(self, i: int) -> bool:
        return any(self.encoded.truncated[k] for k in self.prompts(i))

    def windows(self, i: int) -> int:
        return len(self.prompts(i))

    @property
    def num_tokens(self) -> int:
        return sum(self.tokens(i) for i in range(len(self.inverse)))

    @property
    def num_truncated(self) -> int:
        return sum(self.truncated(i) for i in range(len(self.inverse)))

    @property
    def num_windows(self) -> int:
        return sum(self.windows(i) for i in range(len(self.inverse)))

    def best(self, prompt_values: Sequence[float]) -> list[int]:
        """Per input document: its prompt with the highest value (the first of equals)."""
        return [
            max(self.prompts(i), key=lambda k: (prompt_values[k], -k))
            for i in range(len(self.inverse))
        ]

    def expand(self, prompt_values: Sequence[float]) -> list[float]:
        """Values of the prompts -> one per input document (a chunked one's best window's)."""
        return [prompt_values[k] for k in self.best(prompt_values)]


def prepare(request: RerankRequest, encoder: PromptEncoder, limits: Limits) -> PreparedRequest:
    """Tokenize (each distinct document once) and check the request's token budget.

    Documents are tokenized a chunk of characters at a time, which bounds the tokenizer's
    working memory whatever the request's size, and a request over its token budget stops at
    the first chunk (or, for a chunked document, the first window) that takes it over.
    """
    position: dict[str, int] = {}
    inverse = [position.setdefault(d, len(position)) for d in request.documents]
    unique = list(position)
    uses = [0] * len(unique)
    for j in inverse:
        uses[j] += 1
    options = request.options
    context, room = encoder.context_ids(request.instruction, request.query, options.max_length)
    overlap = effective_overlap(options.chunk_overlap, room) if options.chunked else 0
    prompts: list[tuple[int, ...]] = []
    truncated: list[bool] = []
    first: list[int] = []
    spans: list[tuple[int, int]] = []
    tokens = 0
    for start, stop in chunks([len(d) for d in unique], TOKENIZE_CHUNK_CHARS):
        ids, cut = encoder.encode_tails(unique[start:stop], room)
        long = [start + k for k, c in enumerate(cut) if c] if options.chunked else []
        starts = dict(zip(long, encoder.tail_starts([unique[j] for j in long]), strict=True))
        for j, doc_ids, was_cut in zip(range(start, stop), ids, cut, strict=True):
            first.append(len(prompts))
            if j in starts:
                windows = split(encoder, unique[j], room, overlap, doc_ids, starts.pop(j))
                for w in _named(windows, inverse, j):
                    tokens += uses[j] * (len(context) + len(w.ids))
                    check_token_budget(tokens, limits, complete=False)
                    prompts.append(w.ids)
                    truncated.append(False)
                    spans.append((w.start, w.end))
                continue
            tokens += uses[j] * (len(context) + len(doc_ids))
            prompts.append(doc_ids)
            truncated.append(was_cut)
            spans.append((0, len(unique[j])))
        check_token_budget(tokens, limits, complete=stop == len(unique))
    encoded = EncodedRequest(context, prompts, truncated)
    if not options.chunked:
        return PreparedRequest(request, inverse, encoded)
    return PreparedRequest(request, inverse, encoded, [*first, len(prompts)], spans)


def _named(windows: Iterator[Window], inverse: list[int], j: int) -> Iterator[Window]:
    """An error while planning distinct document ``j``'s windows names its first input
    position."""
    try:
        yield from windows
    except ValueError as exc:
        raise ValueError(f"documents[{inverse.index(j)}]: {exc}") from None


# Characters tokenized per call: the tokenizer needs about 30-150 bytes of working memory per
# character (bench/results/memory-*), so at most ~150 MB per request tokenizing; big enough
# that a chunk still spreads over the tokenizer's threads.
TOKENIZE_CHUNK_CHARS = 1 << 20


def chunks(lengths: Sequence[int], size: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, stop)`` ranges of items whose lengths sum to about ``size``
    (an item longer than ``size`` is a range of its own)."""
    out: list[tuple[int, int]] = []
    start = total = 0
    for i, n in enumerate(lengths):
        if i > start and total + n > size:
            out.append((start, i))
            start, total = i, 0
        total += n
    if start < len(lengths):
        out.append((start, len(lengths)))
    return out
