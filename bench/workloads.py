"""The standard workloads, generated from fixed seeds with the real tokenizer.

* ``standard``: one query with an instruction and 100 documents whose token lengths are drawn
  from a log-normal distribution (median 200 tokens, 5% above 2,000);
* ``short``: 1,000 documents of about 30 tokens;
* ``long``: one document of 32k tokens (GPU) or 4k tokens (CPU);
* ``huge``: a 5,000-document request (short documents), the memory-bound case;
* ``rag``: many small requests, each a fresh query over a retriever's top ``n`` passages of
  128-384 tokens (mean 256, a common RAG chunk size): latency, one request at a time.

Documents are windows of one long stream of pseudo-words, decoded back to text, so their
token counts land within a token or two of the target.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

QUERY = "What are the health benefits of drinking green tea every day?"
INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
MEDIAN_TOKENS = 200
P95_TOKENS = 2000  # 5% of documents are longer than this


@dataclass(frozen=True)
class Workload:
    name: str
    documents: list[str]
    max_length: int
    query: str = QUERY
    instruction: str = INSTRUCTION


def lognormal_lengths(n: int, seed: int, median: int = MEDIAN_TOKENS) -> list[int]:
    rng = random.Random(seed)
    sigma = math.log(P95_TOKENS / MEDIAN_TOKENS) / 1.6449  # z of the 95th percentile
    return [max(4, round(rng.lognormvariate(math.log(median), sigma))) for _ in range(n)]


class TextSource:
    """Decoded windows of a seeded pseudo-word stream, cut to exact token counts."""

    def __init__(self, tokenizer, seed: int = 0, tokens: int = 60_000) -> None:
        rng = random.Random(seed)
        syllables = ["ka", "to", "ri", "ne", "sa", "lo", "mi", "du", "ve", "ga", "pho", "str"]
        words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(3000)]
        words += ["tea", "green", "health", "the", "of", "and", "is", "daily", "benefit"] * 30
        pieces, n_words = [], 0
        while n_words < tokens:  # a word is at least one token: the stream holds ``tokens``
            sentence = rng.choices(words, k=rng.randint(6, 18))
            n_words += len(sentence)
            pieces.append(" ".join(sentence).capitalize() + rng.choice([".", ".", "!", "?", ";"]))
        self.tokenizer = tokenizer
        self.ids = tokenizer(" ".join(pieces), add_special_tokens=False).input_ids[:tokens]
        self.rng = random.Random(seed + 1)

    def document(self, n_tokens: int) -> str:
        n = min(n_tokens, len(self.ids) - 1)
        start = self.rng.randrange(0, len(self.ids) - n)
        return self.tokenizer.decode(self.ids[start : start + n]).strip()


def standard(tokenizer, n: int = 100, seed: int = 0) -> Workload:
    source = TextSource(tokenizer, seed)
    docs = [source.document(k) for k in lognormal_lengths(n, seed)]
    return Workload("standard", docs, max_length=8192)


def short(tokenizer, n: int = 1000, seed: int = 1) -> Workload:
    source = TextSource(tokenizer, seed)
    rng = random.Random(seed)
    return Workload("short", [source.document(rng.randint(25, 35)) for _ in range(n)], 8192)


def long(tokenizer, tokens: int, seed: int = 2) -> Workload:
    source = TextSource(tokenizer, seed, tokens=tokens + 1000)
    return Workload(f"long-{tokens // 1024}k", [source.document(tokens)], max_length=32768)


def huge(tokenizer, n: int = 5000, seed: int = 3) -> Workload:
    source = TextSource(tokenizer, seed)
    docs = [source.document(k) for k in lognormal_lengths(n, seed, median=40)]
    return Workload(f"{n}-docs", docs, max_length=8192)


def rag(tokenizer, n_docs: int, n_requests: int, seed: int = 4) -> list[Workload]:
    """``n_requests`` requests of ``n_docs`` passages each, every one with its own query (no
    prefix shared across requests)."""
    source = TextSource(tokenizer, seed)
    rng = random.Random(seed)
    return [
        Workload(
            f"rag-{n_docs}",
            [source.document(rng.randint(128, 384)) for _ in range(n_docs)],
            max_length=8192,
            query=f"question {r}: {QUERY}",
        )
        for r in range(n_requests)
    ]
