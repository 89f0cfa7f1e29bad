"""How far float16, bfloat16 (and later FP8) scores drift from float32, on your own data.

    python -m reranker.drift --model DIR_OR_HUB_ID --requests FILE [--modes float16,bfloat16]

Random-weight tests and benchmarks say little about the real checkpoint's drift, so this is a
command that users run on their own GPU, queries and documents: the model is loaded once per
mode (float32 first, the reference, on the same device), every request is scored in each, and
one row per mode reports, against float32:

- max and mean |Δ score| over all documents (score = P(yes), what callers see);
- mean Spearman rank correlation per request (ties get average ranks);
- mean top-k overlap per request, |top_k(a) ∩ top_k(b)| / min(k, documents).

Ranks come from the logits, the order ``rank`` returns (scores round to 1.0 above a logit of
about 37, logits stay apart); callers with scores only rank by the scores.

Edge cases, defined here once: Spearman is 1.0 when the two rankings are identical, which
includes both sides ranking every document equal and a request of one document; it is nan
(undefined, and it makes the mode's mean nan, which is meant to be noticed) when exactly one
side ranks every document equal. A request with fewer than k documents compares all of them,
so its overlap is 1.0. Top-k ties are broken by input index, as ``rank`` breaks them.

Modes are a table (:data:`MODES`): a name -> the dtype to load and extra :class:`Settings`
fields (set with ``dataclasses.replace``). A mode whose field this version's ``Settings`` lacks,
or whose device need the run cannot meet, is reported as skipped with the reason.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from decimal import ROUND_FLOOR, Decimal
from typing import Any, NamedTuple

from .cli.documents_file import BOM, json_kind, read_file
from .config import DEFAULT_MAX_LENGTH, MAX_LENGTH_LIMIT, Limits, Settings
from .request.prepare import RerankRequest
from .request.results import rank_order
from .validation import check_int

# -- metrics (pure functions) ------------------------------------------------------------------


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


# -- the table -----------------------------------------------------------------------------------


def _down(x: float) -> str:
    """Six decimals rounded down, so that a correlation below 1 never prints as 1.000000."""
    if math.isnan(x):
        return "nan"
    return str(Decimal(repr(x)).quantize(Decimal("0.000001"), rounding=ROUND_FLOOR))


def _cells(row: DriftRow) -> list[str]:
    def num(value: float | None, fmt: Callable[[float], str]) -> str:
        return "-" if value is None else fmt(value)

    return [
        row.mode,
        row.dtype or "-",
        str(row.requests) if row.status == "ran" else "-",
        str(row.documents) if row.status == "ran" else "-",
        num(row.max_abs_diff, lambda v: f"{v:.2e}"),
        num(row.mean_abs_diff, lambda v: f"{v:.2e}"),
        num(row.spearman, _down),
        num(row.top_k_overlap, _down),
        num(row.seconds, lambda v: f"{v:.2f}"),
        f"{row.status}: {row.note}" if row.status != "ran" else row.note,
    ]


def format_table(rows: Sequence[DriftRow]) -> str:
    """Rows as aligned text, one line per mode (the same columns in the command and bench/)."""
    k = rows[0].k if rows else 10
    header = [
        "mode",
        "dtype",
        "requests",
        "documents",
        "max |Δ score|",
        "mean |Δ score|",
        "Spearman",
        f"top-{k} overlap",
        "seconds",
        "note",
    ]
    body = [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = []
    for line in [header, *body]:
        pairs = enumerate(zip(line, widths, strict=True))
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in pairs]
        cells[-1] = line[-1]  # the note, last and unpadded
        lines.append(" | ".join(cells if line[-1] else cells[:-1]))
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    """nan -> null: JSON has no nan, and strict parsers reject Python's ``NaN``."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def row_dict(row: DriftRow) -> dict:
    """A row as JSON-ready values (nan as null)."""
    return _json_safe(asdict(row))


# -- modes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    """How to load a mode: ``Reranker.load(dtype=...)`` with ``replace(settings, **settings)``."""

    dtype: str | None  # None: what Reranker.load picks under the settings (as a deployment does)
    settings: Mapping[str, Any] = field(default_factory=dict)
    cuda_capability: tuple[int, int] | None = None  # None: any device; else CUDA, at least this


REFERENCE = "float32"
MODES: dict[str, Mode] = {
    "float32": Mode("float32"),
    "float16": Mode("float16"),
    "bfloat16": Mode("bfloat16"),
    # FP8 tensor cores: Ada (8.9) and Hopper (9.0) on. Skipped until Settings has the field.
    "fp8": Mode(None, {"quantization": "fp8"}, cuda_capability=(8, 9)),
}
DEFAULT_MODES = ("float16", "bfloat16")


def mode_settings(base: Settings, name: str, table: Mapping[str, Mode]) -> Settings | str:
    """The settings mode ``name`` loads under, or why it cannot run with this ``Settings``.

    Every field some mode of ``table`` sets is reset to its default in the modes that do not
    set it, so that e.g. ``RERANKER_QUANTIZATION=fp8`` in the environment does not quantize the
    float32 reference.
    """
    known = {f.name: f for f in fields(Settings)}
    missing = [f for f in table[name].settings if f not in known]
    if missing:
        return f"needs Settings.{missing[0]}, which this version of reranker does not have"
    neutral = {f: known[f].default for m in table.values() for f in m.settings if f in known}
    settings = replace(base, **{**neutral, **table[name].settings})
    settings.validate()
    return settings


def device_problem(mode: Mode, device: str) -> str | None:
    """Why ``device`` cannot run ``mode``, or None."""
    if mode.cuda_capability is None:
        return None
    import torch

    need = ".".join(map(str, mode.cuda_capability))
    if torch.device(device).type != "cuda":
        return f"needs a CUDA GPU of compute capability {need} or newer; this run is on {device}"
    capability = torch.cuda.get_device_capability(torch.device(device))
    if capability < mode.cuda_capability:
        name = torch.cuda.get_device_name(torch.device(device))
        have = ".".join(map(str, capability))
        return f"needs compute capability {need} or newer; {name} has {have}"
    return None


# -- scoring and comparing -----------------------------------------------------------------------


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
    from .api import Reranker

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


# -- the requests file ---------------------------------------------------------------------------

FIELDS = ("query", "documents", "instruction")
SHAPE = 'expected one JSON object per line: {"query": ..., "documents": [...]}'


def read_requests(
    text: str, path: str, limits: Limits, max_length: int = DEFAULT_MAX_LENGTH
) -> tuple[list[RerankRequest], list[str]]:
    """The requests of a JSON Lines file, and each one's label (``--requests PATH, line N``).

    Lines end at ``\\n`` (``\\r\\n`` too); blank lines are skipped; a UTF-8 byte-order mark is
    ignored. Each line is an object with ``query``, ``documents`` and optionally
    ``instruction``; every error names the file and the line.
    """
    where = "--requests - (stdin)" if path == "-" else f"--requests {path}"
    requests, labels = [], []
    for number, line in enumerate(text.removeprefix(BOM).split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        label = f"{where}, line {number}"
        try:
            value = json.loads(line)
        except (ValueError, RecursionError) as exc:
            hint = "; the file is JSON Lines, not a JSON array" if line.lstrip()[:1] == "[" else ""
            raise ValueError(f"{label}: not valid JSON ({exc}); {SHAPE}{hint}") from None
        if not isinstance(value, dict):
            hint = "; the file is JSON Lines, not a JSON array" if isinstance(value, list) else ""
            raise ValueError(f"{label}: {SHAPE}, got {json_kind(value)}{hint}")
        extra = [f for f in value if f not in FIELDS]
        if extra:
            raise ValueError(
                f"{label}: unknown field {extra[0]!r} (a line holds query, documents and, "
                "optionally, instruction)"
            )
        for name in ("query", "documents"):
            if name not in value:
                raise ValueError(f"{label}: missing field {name!r}")
        try:
            request = RerankRequest.build(
                limits,
                query=value["query"],
                documents=value["documents"],
                instruction=value.get("instruction"),
                max_length=max_length,
                return_documents=False,
            )
        except ValueError as exc:
            raise ValueError(f"{label}: {exc}") from None
        requests.append(request)
        labels.append(label)
    if not requests:
        raise ValueError(f"{where}: no requests in the file; {SHAPE}")
    return requests, labels


# -- the command ---------------------------------------------------------------------------------


def parse_modes(text: str, table: Mapping[str, Mode] = MODES) -> list[str]:
    """``--modes``: comma-separated names from ``table``, in order, each once."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise ValueError(f"--modes: name at least one of {', '.join(table)}")
    for name in names:
        if name not in table:
            raise ValueError(f"--modes: unknown mode {name!r}; known: {', '.join(table)}")
    return list(dict.fromkeys(names))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reranker.drift",
        description="Compare scores in float16, bfloat16, ... against float32 on your own "
        "queries and documents: one table row per mode.",
    )
    p.add_argument(
        "--model", required=True, help="a local model directory, or a hub id of the form owner/name"
    )
    p.add_argument(
        "--requests",
        required=True,
        metavar="FILE",
        help='JSON Lines, one {"query": ..., "documents": [...], "instruction": ...} per line '
        "(instruction optional); - reads stdin",
    )
    p.add_argument(
        "--modes",
        default=",".join(DEFAULT_MODES),
        help=f"comma-separated, of {', '.join(MODES)}; float32 here re-runs the reference "
        f"(default: {','.join(DEFAULT_MODES)})",
    )
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if any)")
    p.add_argument(
        "--reference-device",
        default=None,
        help="where the float32 reference runs (default: --device)",
    )
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH)
    p.add_argument("--top-k", type=int, default=10, help="k of the top-k overlap (default 10)")
    p.add_argument("--json", metavar="OUT", default=None, help="also write the rows as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        from .loading.weights import model_argument

        model = model_argument(args.model)
        modes = parse_modes(args.modes)
        check_int("--top-k", args.top_k, low=1)
        check_int("--max-length", args.max_length, low=1, high=MAX_LENGTH_LIMIT)
        settings = Settings.from_env()
        # Fail on a bad file before spending minutes loading weights.
        text = read_file(args.requests, sys.stdin, option="--requests")
        requests, labels = read_requests(text, args.requests, settings.limits, args.max_length)
        import torch

        from .config import HUB_MODEL_ID

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        progress = None if args.quiet else lambda line: print(f"drift: {line}", file=sys.stderr)
        rows = compare(
            model,
            requests,
            modes,
            device,
            k=args.top_k,
            settings=settings,
            revision=settings.hub_revision if model == HUB_MODEL_ID else None,
            reference_device=args.reference_device,
            labels=labels,
            progress=progress,
        )
        print(format_table(rows), flush=True)
        if args.json:
            report = {
                "model": model,
                "device": device,
                "reference": REFERENCE,
                "reference_device": args.reference_device or device,
                "k": args.top_k,
                "rows": [row_dict(r) for r in rows],
            }
            try:
                with open(args.json, "w", encoding="utf-8") as f:
                    json.dump(report, f, indent=1, allow_nan=False)
                    f.write("\n")
            except OSError as exc:
                raise ValueError(f"--json {args.json}: {exc.strerror or exc}") from None
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"drift: error: {exc}", file=sys.stderr)
        return 1
    return 1 if any(r.status == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
