"""The tables the README and docs pages mark as rendered equal what devtools/tables.py renders
from the results file each one names, so a figure cannot drift from its bench/results/ file."""

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
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def marked_tables() -> list[tuple[str, str, str]]:
    """(page, command, the table the page shows) for every table marked as rendered."""
    return [
        (str(page.relative_to(ROOT)), command, table.rstrip("\n"))
        for page in PAGES
        for command, table in MARK.findall(page.read_text())
    ]


def test_the_pages_tables_of_figures_are_rendered():
    """Every table on the performance page and in the README's performance section is rendered.
    Fault seen failing: the cross-request batching table's marker line deleted."""
    marked = [(page, command) for page, command, _ in marked_tables()]
    assert sum(page == "docs/performance.md" for page, _ in marked) == 6, marked
    assert sum(page == "README.md" for page, _ in marked) == 1, marked
    readme = (ROOT / "README.md").read_text()
    glance = readme.split("## Performance at a glance")[1].split("\n## ")[0]
    for page, text in [("README.md", glance), ("docs/performance.md", None)]:
        text = text or (ROOT / page).read_text()
        tables_shown = re.findall(r"^(?:.*\n)?\|.*\n\|---", text, re.M)
        unmarked = [t for t in tables_shown if not t.startswith("<!-- rendered:")]
        assert not unmarked, (page, unmarked)


@pytest.mark.parametrize(("page", "command", "shown"), marked_tables())
def test_marked_table_equals_the_rendered_one(page, command, shown):
    """Faults seen failing: docs/performance.md with rerank serve's p50 as 57.3 (the file: 57.36);
    README.md with this package's tokens/s as 40,975 (the file: 40974.1); docs/performance.md's
    load test with 2 clients' requests/s as 18.6 (the file: 18.5)."""
    args = shlex.split(command)[5:]
    files = tables.parser().parse_args(args).files
    assert files and all((ROOT / f).is_file() for f in files), command
    assert shown == tables.run(args), page


def test_render_command_prints_the_table(capsys):
    assert tables.main(["bench/results/serve-cpu-2026-12-07.json"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| target | p50 ms |") and "| rerank serve | 50.6 |" in out


def test_run_results_render_from_json_and_from_printed_output():
    """bench/run.py's printed output parses to the figures its JSON holds (run 2 has both)."""
    run2 = "bench/results/gpu-h100-2026-11-26-run2"
    for table in ("engines", "batching", "glance"):
        assert tables.run(["--table", table, f"{run2}.json"]) == tables.run(
            ["--table", table, f"{run2}.txt"]
        ), table


def test_rows_option_picks_rows_in_order():
    out = tables.run(["--rows", "long-4k,standard", "bench/results/cpu-2026-11-26.txt"])
    lines = out.splitlines()
    assert lines[2].startswith("| one 4k-token document |") and "| out of memory |" in lines[3]
