"""Scoring every request in each mode, one model loaded at a time, and comparing each mode
with the float32 reference."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from reranker.config import Settings
from reranker.request.prepare import RerankRequest
from reranker.validation import check_int

from .metrics import DriftRow, Scored, request_drift, summarize
from .modes import DEFAULT_MODES, MODES, REFERENCE, Mode, device_problem, mode_settings


def score_requests(
    reranker: Any, requests: Sequence[RerankRequest], labels: Sequence[str] | None = None
) -> list[Scored]:
    """Every document of every request, scored by ``reranker`` (a :class:`Reranker`)."""
    out = []
    for i, request in enumerate(requests):
        whole = replace(
            request, options=replace(request.options, top_k=None, return_documents=False)
        )
        try:
            result = reranker.rerank(whole)
        except ValueError as exc:  # e.g. the token budget, known only after tokenizing
            raise ValueError(f"{labels[i] if labels else f'requests[{i}]'}: {exc}") from None
        scores = [0.0] * len(request.documents)
        logits = [0.0] * len(request.documents)
        for r in result.results:
            scores[r.index], logits[r.index] = r.score, r.logit
        out.append(Scored(scores, logits))
    return out


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _free(device: str) -> None:
    """Give back what the previous mode held before the next loads (16-32 GB on the 8B)."""
    gc.collect()
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def _run(
    model: str,
    requests: Sequence[RerankRequest],
    device: str,
    dtype: str | None,
    settings: Settings,
    revision: str | None,
    labels: Sequence[str] | None,
) -> tuple[list[Scored], float, str]:
    from reranker.api import Reranker

    reranker = Reranker.load(
        model, device=device, dtype=dtype, settings=settings, revision=revision
    )
    try:
        started = time.perf_counter()
        scored = score_requests(reranker, requests, labels)
        seconds = time.perf_counter() - started
        return scored, seconds, str(reranker.dtype).removeprefix("torch.")
    finally:
        reranker.close()
        del reranker  # the caller's _free then gives its memory back


def compare(
    model: str | os.PathLike,
    requests: Sequence[RerankRequest],
    modes: Sequence[str] = DEFAULT_MODES,
    device: str | None = None,
    *,
    k: int = 10,
    settings: Settings | None = None,
    revision: str | None = None,
    reference_device: str | None = None,
    table: Mapping[str, Mode] = MODES,
    labels: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[DriftRow]:
    """Score ``requests`` in float32 and in each of ``modes``; one row per mode, the reference
    (vs itself) first. One model is loaded at a time: each is freed before the next loads.

    ``device`` defaults to cuda when available, else cpu; the reference runs there too unless
    ``reference_device`` says otherwise (float32 of the 8B needs 32 GB). A mode that cannot run
    here is a ``skipped`` row; one whose load or scoring fails is a ``failed`` row (the
    reference failing raises).
    """
    import torch

    check_int("k", k, low=1)
    if not requests:
        raise ValueError("no requests to compare")
    unknown = [m for m in modes if m not in table]
    if unknown:
        raise ValueError(f"unknown mode {unknown[0]!r}; known: {', '.join(table)}")
    model = os.fspath(model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    reference_device = reference_device or device
    base = Settings.from_env() if settings is None else settings
    say = progress or (lambda line: None)

    def run(name: str, on: str, chosen: Settings) -> tuple[list[Scored], float, str]:
        say(f"{name} on {on}: loading")
        out = _run(model, requests, on, table[name].dtype, chosen, revision, labels)
        say(f"{name} on {on}: scored {len(requests)} requests in {out[1]:.2f}s")
        return out

    chosen = mode_settings(base, REFERENCE, table)
    if isinstance(chosen, str):
        raise ValueError(f"the {REFERENCE} reference: {chosen}")
    reference, seconds, dtype = run(REFERENCE, reference_device, chosen)
    _free(reference_device)
    same = [request_drift(r, r, k) for r in reference]
    rows = [summarize(f"{REFERENCE} (reference)", same, k=k, dtype=dtype, seconds=seconds)]
    for name in modes:
        try:
            chosen = mode_settings(base, name, table)
        except ValueError as exc:  # a table entry whose values Settings.validate rejects
            rows.append(DriftRow(name, status="failed", k=k, note=_first_line(exc)))
            continue
        problem = chosen if isinstance(chosen, str) else device_problem(table[name], device)
        if problem is not None:
            say(f"{name}: skipped: {problem}")
            rows.append(DriftRow(name, status="skipped", k=k, note=problem))
            continue
        try:
            scored, seconds, dtype = run(name, device, chosen)
        except (OSError, ValueError, RuntimeError) as exc:  # out of memory, unsupported, ...
            say(f"{name}: failed: {_first_line(exc)}")
            rows.append(DriftRow(name, status="failed", k=k, note=_first_line(exc)))
        else:
            drifts = [request_drift(r, s, k) for r, s in zip(reference, scored, strict=True)]
            rows.append(summarize(name, drifts, k=k, dtype=dtype, seconds=seconds))
        _free(device)
    return rows
