"""The markdown tables docs pages show, rendered from the results files in bench/results/.

    uv run python -m devtools.tables bench/results/serve-cpu-2026-12-07.json

prints the table that file stands behind. A page marks such a table with the command, on the
line before it, as an HTML comment (``<!-- rendered: uv run python -m devtools.tables FILE -->``);
tests/test_tables.py renders each marked table again and checks that the page shows it as is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def signed(value: float) -> str:
    """An overhead in ms: ``0`` for none, else with its sign (``+2.1``, ``-1.9``)."""
    return "0" if value == 0 else f"{value:+.1f}"


def serve_latency(results: dict) -> list[list[str]]:
    """bench/serve_latency.py's JSON: one row per target (library, Cog server, rerank serve)."""
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
    return [header, *rows]


# results file name prefix -> the function that turns its JSON into rows (the first: header)
RENDERERS = {"serve-": serve_latency}


def markdown(rows: list[list[str]]) -> str:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def render(path: Path) -> str:
    """The markdown table of one results file (a path from the repository root or absolute)."""
    path = path if path.is_absolute() else ROOT / path
    for prefix, renderer in RENDERERS.items():
        if path.name.startswith(prefix) and path.suffix == ".json":
            return markdown(renderer(json.loads(path.read_text())))
    raise SystemExit(f"no table renderer for {path.name} (known: {', '.join(RENDERERS)}*.json)")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    print("\n\n".join(render(Path(a)) for a in args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
