"""The README's offline commands work as written (with `uv run` being this environment)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def run_as_written(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """`uv run X` runs X from this environment (the tests already run inside `uv run`)."""
    argv = shlex.split(command)
    assert argv[:2] == ["uv", "run"], command
    argv = argv[2:]
    if (BIN / argv[0]).exists():
        argv[0] = str(BIN / argv[0])
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANKER_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_quick_start_offline_commands(tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    commands = [c for c in readme_commands() if "tiny-model" in c and c.startswith("uv run")]
    make = [c for c in commands if "reranker.offline" in c]
    rank = [c for c in commands if c.startswith("uv run rerank --model tiny-model")]
    assert make and rank, "the README shows how to try the tiny model"
    proc = run_as_written(make[0], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for command in rank:
        proc = run_as_written(command, tmp_path)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        documents = json.loads((ROOT / "examples" / "documents.json").read_text())
        assert out["total_documents"] == len(documents)
        assert len(out["results"]) == 3
        assert all(0.0 <= r["score"] <= 1.0 for r in out["results"])


def test_examples_request_is_a_valid_input(reranker):
    request = json.loads((ROOT / "examples" / "request.json").read_text())
    kwargs = {k: v for k, v in request.items() if k not in ("query", "documents")}
    result = reranker.rank(request["query"], request["documents"], **kwargs)
    assert len(result.results) == request["top_k"]


def test_configuration_table_lists_every_setting():
    from dataclasses import fields

    from reranker.config import Settings

    documented = set(re.findall(r"\| `(RERANKER_[A-Z_]+)` \|", README))
    assert {f"RERANKER_{f.name.upper()}" for f in fields(Settings)} == documented


def local_curl_input() -> dict:
    curl = next(c for c in readme_commands() if c.startswith("curl -s -X POST http://127.0.0.1"))
    return json.loads(shlex.split(curl)[-1])["input"]
