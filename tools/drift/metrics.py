"""The drift figures: score differences, Spearman and top-k overlap, per request and per mode.

Pure functions of two score (or logit) lists; :func:`summarize` pools one mode's requests
into a :class:`DriftRow`. The edge cases are those of the package docstring (tools/drift).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from reranker.request.results import rank_order
from reranker.validation import check_int


def _check_lengths(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b):
        raise ValueError(f"the two score lists differ in length ({len(a)} and {len(b)})")


def _has_nan(*lists: Sequence[float]) -> bool:
    return any(math.isnan(x) for values in lists for x in values)


def max_abs_diff(a: Sequence[float], b: Sequence[float]) -> float:
    """max |a_i - b_i|; nan if any value is nan (``max`` alone would depend on the order)."""
    _check_lengths(a, b)
    if _has_nan(a, b):
        return math.nan
    return max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)


def mean_abs_diff(a: Sequence[float], b: Sequence[float]) -> float:
    """mean |a_i - b_i| (0.0 for empty lists)."""
    _check_lengths(a, b)
    if not a:
        return 0.0
    return math.fsum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, lowest value first; equal values share the mean of their positions."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for j in range(start, end + 1):
            ranks[order[j]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation: the Pearson correlation of the average ranks.

    1.0 when the rankings are identical (also when both rank everything equal, and for fewer
    than two values); nan when exactly one side ranks everything equal, or on nan input.
    """
    _check_lengths(a, b)
    if _has_nan(a, b):
        return math.nan
    ra, rb = average_ranks(a), average_ranks(b)
    if ra == rb:
        return 1.0  # exactly, not the 0.9999999999999998 the division below may give
    x = [round(2 * r) for r in ra]  # doubled average ranks are integers: exact sums below
    y = [round(2 * r) for r in rb]
    n = len(x)
    sx, sy = sum(x), sum(y)
    sxy = n * sum(p * q for p, q in zip(x, y, strict=True)) - sx * sy
    sxx = n * sum(p * p for p in x) - sx * sx
    syy = n * sum(q * q for q in y) - sy * sy
    if sxx == 0 or syy == 0:
        return math.nan
    d = sxx * syy
    root = math.isqrt(d)  # exact when d is a square (e.g. reversed rankings: exactly -1.0)
    return max(-1.0, min(1.0, sxy / (root if root * root == d else math.sqrt(d))))


def top_k_overlap(a: Sequence[float], b: Sequence[float], k: int) -> float:
    """|top_k(a) ∩ top_k(b)| / min(k, len(a)), highest first, ties by input index (as
    ``rank`` orders); 1.0 for empty lists, nan on nan input."""
    check_int("k", k, low=1)
    _check_lengths(a, b)
    if _has_nan(a, b):
        return math.nan
    m = min(k, len(a))
    if m == 0:
        return 1.0
    return len(set(rank_order(a)[:m]) & set(rank_order(b)[:m])) / m


# -- one request, one mode -----------------------------------------------------------------------


class Scored(NamedTuple):
    """One request's scores (and logits, when the engine gives them) in input order."""

    scores: list[float]
    logits: list[float] | None = None


@dataclass(frozen=True)
class RequestDrift:
    documents: int
    max_abs_diff: float
    mean_abs_diff: float
    spearman: float
    top_k_overlap: float


def request_drift(reference: Scored, candidate: Scored, k: int) -> RequestDrift:
    """One request's drift: |Δ score| on the scores, ranks on the logits when both have them."""
    if reference.logits is not None and candidate.logits is not None:
        keys_a, keys_b = reference.logits, candidate.logits
    else:
        keys_a, keys_b = reference.scores, candidate.scores
    return RequestDrift(
        documents=len(reference.scores),
        max_abs_diff=max_abs_diff(reference.scores, candidate.scores),
        mean_abs_diff=mean_abs_diff(reference.scores, candidate.scores),
        spearman=spearman(keys_a, keys_b),
        top_k_overlap=top_k_overlap(keys_a, keys_b, k),
    )


@dataclass(frozen=True)
class DriftRow:
    """One mode against the reference: a row of the table, an object of the JSON."""

    mode: str
    status: str = "ran"  # ran | skipped | failed
    dtype: str | None = None  # as loaded
    requests: int = 0
    documents: int = 0
    max_abs_diff: float | None = None  # over every document
    mean_abs_diff: float | None = None  # over every document
    spearman: float | None = None  # mean over requests
    top_k_overlap: float | None = None  # mean over requests
    worst_spearman: float | None = None
    worst_top_k_overlap: float | None = None
    k: int = 10
    seconds: float | None = None  # scoring every request, after loading and warm-up
    note: str = ""
    per_request: list[RequestDrift] = field(default_factory=list)


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _worst(values: Sequence[float]) -> float:
    return math.nan if _has_nan(values) else min(values)


def summarize(
    mode: str,
    per_request: Sequence[RequestDrift],
    *,
    k: int,
    dtype: str | None = None,
    seconds: float | None = None,
    note: str = "",
) -> DriftRow:
    """The row of one mode: diffs pooled over documents, rank metrics averaged over requests."""
    if not per_request:
        raise ValueError("no requests to summarize")
    documents = sum(r.documents for r in per_request)
    diffs = [r.max_abs_diff for r in per_request]
    rhos = [r.spearman for r in per_request]
    overlaps = [r.top_k_overlap for r in per_request]
    return DriftRow(
        mode=mode,
        dtype=dtype,
        requests=len(per_request),
        documents=documents,
        max_abs_diff=math.nan if _has_nan(diffs) else max(diffs),
        mean_abs_diff=math.fsum(r.mean_abs_diff * r.documents for r in per_request) / documents,
        spearman=_mean(rhos),
        top_k_overlap=_mean(overlaps),
        worst_spearman=_worst(rhos),
        worst_top_k_overlap=_worst(overlaps),
        k=k,
        seconds=seconds,
        note=note,
        per_request=list(per_request),
    )
