"""The output: rows as an aligned text table, and as JSON-ready values (nan as null)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from .metrics import DriftRow


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


def json_report(
    model: str, device: str, reference: str, reference_device: str, k: int, rows: Sequence[DriftRow]
) -> dict:
    """What ``--json`` writes: the run's setup and every row (nan as null)."""
    return {
        "model": model,
        "device": device,
        "reference": reference,
        "reference_device": reference_device,
        "k": k,
        "rows": [row_dict(r) for r in rows],
    }


def write_json(path: str, report: dict) -> None:
    """``report`` as indented JSON, strict (no nan), ending in a newline; ``OSError`` as is."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, allow_nan=False)
        f.write("\n")
