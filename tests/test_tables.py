"""The tables docs pages mark as rendered equal what devtools/tables.py renders from the results
file each one names, so a figure cannot drift from its bench/results/ file."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from devtools import tables

ROOT = Path(__file__).resolve().parent.parent
MARK = re.compile(
    r"^<!-- rendered: (uv run python -m devtools\.tables [^>]*?) -->\n((?:\|.*\n?)+)", re.M
)
PAGES = sorted((ROOT / "docs").glob("*.md"))


def marked_tables() -> list[tuple[str, str, str]]:
    """(page, command, the table the page shows) for every table marked as rendered."""
    return [
        (str(page.relative_to(ROOT)), command, table.rstrip("\n"))
        for page in PAGES
        for command, table in MARK.findall(page.read_text())
    ]


def test_performance_page_has_a_rendered_table():
    assert any(page == "docs/performance.md" for page, _, _ in marked_tables())


@pytest.mark.parametrize(("page", "command", "shown"), marked_tables())
def test_marked_table_equals_the_rendered_one(page, command, shown):
    """Fault seen failing: docs/performance.md with rerank serve's p50 as 57.3 (the file: 57.36)."""
    files = shlex.split(command)[5:]
    assert files and all((ROOT / f).is_file() for f in files), command
    assert shown == "\n\n".join(tables.render(Path(f)) for f in files), page


def test_render_command_prints_the_table(capsys):
    assert tables.main(["bench/results/serve-cpu-2026-12-07.json"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| target | p50 ms |") and "| rerank serve | 57.4 |" in out
