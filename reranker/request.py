"""One rerank request: the value every caller builds (``RerankRequest``) and its tokens.

``RerankRequest.build`` is the only place a request's arguments are checked; predict.py, the
CLI, the service and ``Reranker.score/rank`` all build one and pass it on. ``prepare`` turns it
into a :class:`PreparedRequest` (identical documents tokenized and scored once) and checks the
token budget, the one limit that needs the tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .config import DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH, MAX_LENGTH_LIMIT, Limits
from .prompt import resolve_instruction
from .tokenization import EncodedRequest, PromptEncoder
from .validation import check_bool, check_documents, check_int, check_text, check_token_budget


@dataclass(frozen=True)
class RerankRequest:
    """A validated request. Build it with :meth:`build`, which checks every field."""

    query: str
    documents: tuple[str, ...]
    instruction: str  # resolved: None at build time means the model card's default
    top_k: int | None = None  # None or 0: every document
    max_length: int = DEFAULT_MAX_LENGTH
    batch_size: int = DEFAULT_BATCH_SIZE
    return_documents: bool = True

    @classmethod
    def build(
        cls,
        limits: Limits,
        *,
        query: Any,
        documents: Any,
        instruction: Any = None,
        top_k: Any = None,
        max_length: Any = DEFAULT_MAX_LENGTH,
        batch_size: Any = DEFAULT_BATCH_SIZE,
        return_documents: Any = True,
    ) -> RerankRequest:
        """Check every field; raises ``ValueError`` whose message starts with the field's name."""
        query = check_text("query", query, max_chars=limits.max_query_chars, allow_empty=False)
        if instruction is not None:  # None: the model card's default instruction
            instruction = check_text(
                "instruction", instruction, max_chars=limits.max_query_chars, allow_empty=True
            )
        docs = check_documents(documents, limits)
        check_int("max_length", max_length, low=1, high=MAX_LENGTH_LIMIT)
        check_int("batch_size", batch_size, low=1)
        if top_k is not None:
            check_int("top_k", top_k, low=0)
        check_bool("return_documents", return_documents)
        return cls(
            query=query,
            documents=tuple(docs),
            instruction=resolve_instruction(instruction),
            top_k=top_k,
            max_length=max_length,
            batch_size=batch_size,
            return_documents=return_documents,
        )


@dataclass(frozen=True)
class PreparedRequest:
    """A request with token ids. Identical documents are tokenized and scored once."""

    request: RerankRequest
    inverse: list[int]  # request.documents[i] is unique document inverse[i]
    encoded: EncodedRequest  # of the unique documents

    def tokens(self, i: int) -> int:
        """Prompt tokens scored for document ``i`` (input order), after truncation."""
        return len(self.encoded.context) + len(self.encoded.documents[self.inverse[i]])

    def truncated(self, i: int) -> bool:
        return self.encoded.truncated[self.inverse[i]]

    @property
    def num_tokens(self) -> int:
        return sum(self.tokens(i) for i in range(len(self.inverse)))

    @property
    def num_truncated(self) -> int:
        return sum(self.truncated(i) for i in range(len(self.inverse)))

    def expand(self, unique_values: Sequence[float]) -> list[float]:
        """Values of the unique documents -> one per input document."""
        return [unique_values[j] for j in self.inverse]


def prepare(request: RerankRequest, encoder: PromptEncoder, limits: Limits) -> PreparedRequest:
    """Tokenize (each distinct document once) and check the request's token budget.

    Documents are tokenized a chunk of characters at a time, which bounds the tokenizer's
    working memory whatever the request's size, and a request over its token budget stops at
    the first chunk that takes it over.
    """
    position: dict[str, int] = {}
    inverse = [position.setdefault(d, len(position)) for d in request.documents]
    unique = list(position)
    uses = [0] * len(unique)
    for j in inverse:
        uses[j] += 1
    context, room = encoder.context_ids(request.instruction, request.query, request.max_length)
    documents: list[tuple[int, ...]] = []
    truncated: list[bool] = []
    tokens = 0
    for start, stop in chunks([len(d) for d in unique], TOKENIZE_CHUNK_CHARS):
        ids, cut = encoder.encode_tails(unique[start:stop], room)
        tokens += sum(uses[start + k] * (len(context) + len(d)) for k, d in enumerate(ids))
        check_token_budget(tokens, limits, complete=stop == len(unique))
        documents += ids
        truncated += cut
    return PreparedRequest(request, inverse, EncodedRequest(context, documents, truncated))


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
