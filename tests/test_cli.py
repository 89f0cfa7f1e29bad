"""The rerank command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reranker.documents_file import read_documents

QUERY = "capital of France"
DOCS = ["Paris is the capital of France.", "Bananas.", "Lyon"]


def run(args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "reranker", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_json_file(tmp_path, model_dir, reranker):
    f = tmp_path / "docs.json"
    f.write_text(json.dumps(DOCS))
    proc = run(
        [
            "--model",
            str(model_dir),
            "--query",
            QUERY,
            "--documents",
            str(f),
            "--top-k",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    want = reranker.rank(QUERY, DOCS, top_k=2).to_dict()
    assert [r["index"] for r in out["results"]] == [r["index"] for r in want["results"]]
    assert out["usage"] == want["usage"] and out["total_documents"] == 3
    assert abs(out["results"][0]["score"] - want["results"][0]["score"]) < 1e-6


def test_lines_from_stdin_with_the_console_script(model_dir):
    rerank = Path(sys.executable).parent / "rerank"
    proc = subprocess.run(
        [str(rerank), "--model", str(model_dir), "--query", QUERY, "--documents", "-"],
        input="\n".join(DOCS) + "\n\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert sorted(r["document"] for r in out["results"]) == sorted(DOCS)


@pytest.mark.parametrize(
    "args,stdin,message",
    [
        (["--query", "", "--documents", "-"], "a\n", "query must not be empty"),
        (["--query", "q", "--documents", "-"], "[1, 2]", "documents[0] is a JSON number"),
        (["--query", "q", "--documents", "-"], "[not json", "--documents-format lines"),
        (["--query", "q", "--documents", "/no/such/file"], None, "/no/such/file: no such file"),
        (["--query", "q", "--documents", "-", "--max-length", "99999"], "a", "max_length"),
        (["--query", "q", "--documents", "-", "--max-length", "30"], "a", "max_length=30"),
        (["--query", "q", "--documents", "-", "--device", "tpu"], "a", "device must be"),
    ],
)
def test_errors_go_to_stderr_with_nonzero_status(model_dir, args, stdin, message):
    proc = run(["--model", str(model_dir), *args], stdin=stdin)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr


def test_read_documents():
    assert read_documents('["a", "b"]') == ["a", "b"]
    assert read_documents("a\n\nb\n") == ["a", "b"]
    assert read_documents("a\r\n\r\nb\r\n") == ["a", "b"]
    with pytest.raises(ValueError, match="JSON"):
        read_documents("[oops")
