"""Logits -> scores -> ranked results.

``logit`` is the model's log-odds ``logit_yes - logit_no`` (float32); ``score`` is
``sigmoid(logit)``, which is exactly the recipe's ``softmax([logit_no, logit_yes])[1]``.
Ranking sorts by the logit, not the score: sigmoid saturates to 1.0 in floating point for
logits above ~37, and ordering by the logit keeps those apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .prepare import PreparedRequest


def sigmoid(x: float) -> float:
    """Overflow-free logistic function."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@dataclass(frozen=True)
class RankedDocument:
    index: int  # position in the input list
    document: str | None  # None when return_documents=False
    score: float  # P(yes) in [0, 1]
    logit: float  # logit_yes - logit_no, a float32 value
    tokens: int  # prompt tokens scored for this document (after truncation), as in usage
    truncated: bool  # the document was cut to fit max_length
    # long_documents="chunk" only (absent from the output otherwise): the windows the
    # document was scored as, and the character span [start, end) of the best one.
    windows: int | None = None
    best_span: tuple[int, int] | None = None


@dataclass(frozen=True)
class Usage:
    total_tokens: int  # prompt tokens the recipe would run (no padding), all documents
    truncated_documents: int  # documents cut to fit max_length
    windows: int | None = None  # long_documents="chunk" only: prompts scored in all


@dataclass(frozen=True)
class RerankResult:
    instruction: str
    query: str
    results: list[RankedDocument]
    total_documents: int
    usage: Usage

    @classmethod
    def build(cls, prepared: PreparedRequest, prompt_logits: Sequence[float]) -> RerankResult:
        """Sort-and-slice the request's documents by their logits, given one per prompt
        (per distinct document, or per window of a chunked one: its best window counts)."""
        request = prepared.request
        options = request.options
        best = prepared.best(prompt_logits)
        logits = [prompt_logits[k] for k in best]
        order = rank_order(logits)
        if options.top_k:
            order = order[: options.top_k]
        chunked = prepared.spans is not None
        results = [
            RankedDocument(
                index=i,
                document=request.documents[i] if options.return_documents else None,
                score=sigmoid(logits[i]),
                logit=logits[i],
                tokens=prepared.tokens(i),
                truncated=prepared.truncated(i),
                windows=prepared.windows(i) if chunked else None,
                best_span=prepared.spans[best[i]] if chunked else None,
            )
            for i in order
        ]
        usage = Usage(
            prepared.num_tokens,
            prepared.num_truncated,
            windows=prepared.num_windows if chunked else None,
        )
        return cls(
            instruction=request.instruction,
            query=request.query,
            results=results,
            total_documents=len(request.documents),
            usage=usage,
        )

    def to_dict(self) -> dict:
        """The JSON shape shared by the CLI and the Cog predictor (the chunk-only fields are
        left out when unset, so that a truncating request's output is as it always was)."""
        out = asdict(self)
        for item in [*out["results"], out["usage"]]:
            for name in CHUNK_ONLY_FIELDS:
                if item.get(name, 0) is None:
                    del item[name]
            if item.get("best_span") is not None:
                item["best_span"] = list(item["best_span"])
        return out


# Output fields that only long_documents="chunk" fills.
CHUNK_ONLY_FIELDS = ("windows", "best_span")


def rank_order(logits: Sequence[float]) -> list[int]:
    """Indices by logit, highest first; equal logits keep input order."""
    return sorted(range(len(logits)), key=lambda i: (-logits[i], i))
