"""The markdown tables docs pages and the README show, rendered from the results files in
bench/results/.

    uv run python -m devtools.tables [--table NAME] [--rows KEY,KEY] FILE [FILE ...]

prints the table each file stands behind (several files: their tables, a blank line apart). A
page marks such a table with the command, on the line before it, as an HTML comment
(``<!-- rendered: uv run python -m devtools.tables ... -->``); tests/test_tables.py renders each
marked table again and checks that the page shows it as is. A figure on a page is never typed by
hand: change the results file (rerun the bench) and paste the command's output.

Which renderer runs is chosen by the file name's prefix (``RENDERERS``); a kind of results with
several tables names them, ``--table`` picks one (default: the first). Options:

- ``--table NAME``: ``serve-*.json`` (bench/serve_latency.py): ``latency``.
  ``gpu-h100-*.json``, ``cpu-*.txt`` (bench/run.py, JSON or its printed output): ``engines``
  (recipe vs baseline vs reranker per workload; a column no row has a figure for is left out),
  ``ablation`` (GPU only: the standard workload's engine variants, run 1's sweeps), ``batching``
  (cross-request batching, tokens/s per number of clients), ``glance`` (the README's one-line
  summary of the standard workload, GPU only; its date is the file name's). ``load-*.txt``
  (bench/load.py's printed table): ``load``.
- ``--rows KEY,KEY``: only these rows, in this order; a row's key is its first cell, or for the
  ``engines`` table its workload as bench/run.py names it (``standard``, ``short``, ``long-4k``,
  ``long-31k``, ``5000-docs``).

Conventions: seconds with two decimals; a ratio with one decimal (two below 1: ``0.96x``);
an engine that failed shows its error up to the first colon (``out of memory``); ``–`` where a
ratio's other side failed, an empty cell where it did not run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

Rows = list[list[str]]


def signed(value: float) -> str:
    """An overhead in ms: ``0`` for none, else with its sign (``+2.1``, ``-1.9``)."""
    return "0" if value == 0 else f"{value:+.1f}"


def ratio(value: float) -> str:
    return f"{value:.1f}x" if value >= 1 else f"{value:.2f}x"


def seconds(value: float) -> str:
    return f"{value:.2f} s"


def only(rows: Rows, keys: list[str] | None, key: Callable[[list[str]], str] = lambda r: r[0]):
    """The header and the body rows whose key is in ``keys``, in that order (all without keys)."""
    header, *body = rows
    if keys is None:
        return rows
    by_key = {key(r): r for r in body}
    missing = [k for k in keys if k not in by_key]
    if missing:
        raise SystemExit(f"no row {', '.join(missing)} (rows: {', '.join(by_key)})")
    return [header, *(by_key[k] for k in keys)]


# --- bench/serve_latency.py ---------------------------------------------------------------


def serve_latency(path: Path, keys: list[str] | None) -> Rows:
    """bench/serve_latency.py's JSON: one row per target (library, Cog server, rerank serve)."""
    results = json.loads(path.read_text())
    header = [
        "target", "p50 ms", "p95 ms", "overhead ms", "req/s one at a time", "req/s at 8 clients",
        "merge gain", "1-document probe overhead ms",
    ]  # fmt: skip
    rows = [
        [
            r["target"],
            f"{r['p50_ms']:.1f}",
            f"{r['p95_ms']:.1f}",
            signed(r["overhead_ms"]),
            f"{r['solo_rps']:.2f}",
            f"{r['clients_rps']:.2f}",
            f"{r['merge_gain']:.2f}x",
            signed(r["probe_overhead_ms"]),
        ]
        for r in results["rows"]
    ]
    return only([header, *rows], keys)


# --- bench/run.py ---------------------------------------------------------------------------

# bench/run.py's workload names -> what the tables call them
WORKLOADS = {
    "standard": "standard: 100 docs, median 200 tokens, 5% > 2000",
    "short": "1,000 docs of ~30 tokens",
    "long-31k": "one 32k-token document",
    "long-4k": "one 4k-token document",
    "5000-docs": "5,000 short docs (median 40 tokens)",
}
RUN_ROW = re.compile(r"^(\S+)\s+\| (.+?)\s+\| (.*)$")


def parse_run_txt(text: str) -> dict:
    """bench/run.py's printed output as its JSON would hold it: rows of workload, engine,
    seconds, tokens_per_s, peak_gib, mfu_hardware (None where not printed), error (a failed
    engine's message), and the reranker rows' ``extra`` ratios from the ``# -> `` lines; the
    device from the first line."""
    rows: list[dict] = []
    head = re.match(r"# \d{4}-\d\d-\d\d [\d:]+ UTC \| ([^|]+?) \|", text)
    for line in text.splitlines():
        if line.startswith("#") and rows and "->" in line:
            if m := re.search(r"([\d.]+)x the recipe", line):
                rows[-1]["extra"]["vs_recipe"] = float(m[1])
            if m := re.search(r"([\d.]+)x (?:the baseline )?\(b\)", line):
                rows[-1]["extra"]["vs_baseline"] = float(m[1])
            continue
        m = RUN_ROW.match(line)
        if not m or line.startswith("#"):
            continue
        fields = [f.strip() for f in m[3].split("|")]
        row = {"workload": m[1], "engine": m[2], "seconds": None, "tokens_per_s": None,
               "peak_gib": None, "mfu_hardware": None, "extra": {}, "error": None}  # fmt: skip
        if not re.fullmatch(r"[\d.]+s", fields[0]):
            row["error"] = " | ".join([fields[0], *fields[1:]])
            rows.append(row)
            continue
        row["seconds"] = float(fields[0][:-1])
        for f in fields[1:]:
            if m2 := re.fullmatch(r"([\d.]+) tok/s", f):
                row["tokens_per_s"] = float(m2[1])
            elif m2 := re.fullmatch(r"peak\s+([\d.]+) GiB", f):
                row["peak_gib"] = float(m2[1])
            elif m2 := re.fullmatch(r"MFU\(hw\)\s+([\d.]+)%", f):
                row["mfu_hardware"] = float(m2[1]) / 100
        rows.append(row)
    return {"device": head[1] if head else "", "rows": rows}


@cache
def bench_run(path: Path) -> dict:
    """bench/run.py's results: its JSON, or its printed output (.txt) where only that exists."""
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return parse_run_txt(path.read_text())


def run_row(path: Path, workload: str, engine: str) -> dict | None:
    """The first row of that workload whose engine is ``engine`` (``reranker``: the first
    reranker row, the defaults, before any sweep's variants)."""
    for r in bench_run(path)["rows"]:
        if r["workload"] != workload:
            continue
        if r["engine"] == engine or (engine == "reranker" and r["engine"].startswith("reranker ")):
            return r
    return None


def timed(row: dict | None) -> str:
    if row is None:
        return ""
    if row.get("error"):
        return row["error"].split(":")[0]
    return seconds(row["seconds"])


def versus(row: dict | None, other: dict | None, key: str) -> str:
    if row is None or other is None:
        return ""
    if other.get("error") or key not in row.get("extra", {}):
        return "–"
    return ratio(row["extra"][key])


def percent(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def engines(path: Path, keys: list[str] | None) -> Rows:
    """Recipe (a), baseline (b) and reranker (c) per workload; a column with no figure in any
    row (MFU and peak memory on CPU) is left out."""
    header = [
        "workload", "(a) recipe", "(b) baseline", "(c) reranker", "vs (a)", "vs (b)",
        "(c) tokens/s", "(c) MFU", "peak GPU memory (a) / (c)",
    ]  # fmt: skip
    workloads = list(dict.fromkeys(r["workload"] for r in bench_run(path)["rows"]))
    body = []
    for w in keys or [w for w in workloads if w in WORKLOADS]:
        a, b, c = (run_row(path, w, e) for e in ("(a) recipe", "(b) baseline", "reranker"))
        if c is None:
            raise SystemExit(f"{path.name}: no reranker row for workload {w}")
        peak = ""
        if c.get("peak_gib") is not None:
            a_peak = "–" if a is None or a.get("peak_gib") is None else f"{a['peak_gib']:.1f}"
            peak = f"{a_peak} / {c['peak_gib']:.1f} GiB"
        tokens = "" if c.get("tokens_per_s") is None else f"{c['tokens_per_s']:,.0f}"
        body.append([
            WORKLOADS.get(w, w), timed(a), timed(b), timed(c),
            versus(c, a, "vs_recipe"), versus(c, b, "vs_baseline"),
            tokens, percent(c.get("mfu_hardware")), peak,
        ])  # fmt: skip
    keep = [i for i in range(len(header)) if i < 6 or any(row[i] for row in body)]
    return [[row[i] for i in keep] for row in [header, *body]]


# the standard workload's variants in run 1: label -> engine (several: their times joined)
ABLATION = {
    "eager PyTorch, no `torch.compile`": ["reranker float16"],
    "+ `torch.compile` of the layer math (the default on CUDA)": ["reranker compiled"],
    "padded SDPA attention instead of FlashAttention varlen": ["reranker sdpa"],
    "prefix reuse off": ["reranker reuse=off"],
    "token budget 4,096 / 8,192 / 16,384 / 32,768": [
        f"reranker budget={n}" for n in (4096, 8192, 16384, 32768)
    ],
}


def ablation(path: Path, keys: list[str] | None) -> Rows:
    """The standard workload under each engine variant: time and MFU (one variant: its MFU)."""
    body = []
    for label, names in ABLATION.items():
        rows = [run_row(path, "standard", n) for n in names]
        if any(r is None for r in rows):
            raise SystemExit(f"{path.name}: no standard row for {', '.join(names)}")
        time = " / ".join(f"{r['seconds']:.2f}" for r in rows) + " s"
        mfu = percent(rows[0]["mfu_hardware"]) if len(rows) == 1 else ""
        body.append([label, time, mfu])
    return only([["on the standard workload (run 1)", "time", "MFU"], *body], keys)


def batching(path: Path, keys: list[str] | None) -> Rows:
    """Cross-request batching: tokens/s per number of concurrent clients, one column each."""
    found = [
        (m[1], r)
        for r in bench_run(path)["rows"]
        if (m := re.fullmatch(r"reranker, (\d+) clients", r["engine"]))
    ]
    header = ["concurrent clients", *(n for n, _ in found)]
    return only([header, ["tokens/s", *(f"{r['tokens_per_s']:,.0f}" for _, r in found)]], keys)


def glance(path: Path, keys: list[str] | None) -> Rows:
    """The README's line: the standard workload, the recipe's time against this package's."""
    a, c = run_row(path, "standard", "(a) recipe"), run_row(path, "standard", "reranker")
    date = re.search(r"\d{4}-\d{2}-\d{2}", path.name)
    row = [
        bench_run(path).get("device", ""),
        date[0] if date else "",
        timed(a),
        f"{timed(c)} ({versus(c, a, 'vs_recipe')})",
        f"{c['tokens_per_s']:,.0f}",
        percent(c.get("mfu_hardware")),
    ]
    header = ["device", "date", "model card's code", "this package", "tokens/s", "MFU"]
    return only([header, row], keys)


# --- bench/load.py ----------------------------------------------------------------------------


def load_test(path: Path, keys: list[str] | None) -> Rows:
    """bench/load.py's printed table, as printed (one row per number of clients)."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return only([rows[0], *(r for r in rows[1:] if not set("".join(r)) <= set("-"))], keys)


# results file name prefix -> {table name: renderer} (the first: the default table); a renderer
# takes the file and the row keys asked for (None: all) and returns rows, the first the header
RENDERERS: dict[str, dict[str, Callable[[Path, list[str] | None], Rows]]] = {
    "serve-": {"latency": serve_latency},
    "gpu-h100-": {"engines": engines, "ablation": ablation, "batching": batching, "glance": glance},
    "cpu-": {"engines": engines, "batching": batching},
    "load-": {"load": load_test},
}


def markdown(rows: Rows) -> str:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def render(path: Path, table: str | None = None, rows: list[str] | None = None) -> str:
    """The markdown table of one results file (a path from the repository root or absolute)."""
    path = path if path.is_absolute() else ROOT / path
    for prefix, tables in RENDERERS.items():
        if path.name.startswith(prefix):
            name = table or next(iter(tables))
            if name not in tables:
                raise SystemExit(f"{path.name}: no table {name} (tables: {', '.join(tables)})")
            return markdown(tables[name](path, rows))
    raise SystemExit(f"no table renderer for {path.name} (known: {', '.join(RENDERERS)}*)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m devtools.tables", description=__doc__.split("\n")[0]
    )
    p.add_argument("--table", help="which of the file kind's tables (default: the first)")
    p.add_argument("--rows", type=lambda s: s.split(","), help="only these rows, in this order")
    p.add_argument("files", nargs="+", type=Path)
    return p


def run(args: list[str]) -> str:
    """What the command prints for these arguments (the words after ``devtools.tables``)."""
    ns = parser().parse_args(args)
    return "\n\n".join(render(f, ns.table, ns.rows) for f in ns.files)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    print(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
