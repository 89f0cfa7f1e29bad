"""The rerank command line.

Most tests call ``reranker.cli.main.main`` in this process, with stdin, stdout and stderr
swapped for buffers: what they test is the command's behaviour, not the process around it.
The process boundary has its own tests, marked ``subprocess``: the console script reading
stdin, and the progress bar on a real terminal (a pseudo-terminal).
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from reranker.cli.documents_file import read_documents
from reranker.cli.main import main

QUERY = "capital of France"
DOCS = ["Paris is the capital of France.", "Bananas.", "Lyon"]


def run(args, stdin=None):
    """``rerank ARGS`` in this process: its exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    stream = io.TextIOWrapper(io.BytesIO((stdin or "").encode()), encoding="utf-8")
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        saved, sys.stdin = sys.stdin, stream
        try:
            code = main(args)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
        finally:
            sys.stdin = saved
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


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
    facts = [(r["index"], r["tokens"], r["truncated"]) for r in out["results"]]
    assert facts == [(r["index"], r["tokens"], r["truncated"]) for r in want["results"]]


@pytest.mark.subprocess
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
        (["--query", "q", "--documents", "-", "--long-documents", "x"], "a", "invalid choice"),
        (
            [
                "--query",
                "q",
                "--documents",
                "-",
                "--long-documents",
                "chunk",
                "--chunk-overlap",
                "-2",
            ],
            "a",
            "chunk_overlap must be between 0 and 32768",
        ),
    ],
)
def test_errors_go_to_stderr_with_nonzero_status(model_dir, args, stdin, message):
    proc = run(["--model", str(model_dir), *args], stdin=stdin)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr


def test_long_documents_chunk(tmp_path, model_dir, reranker):
    docs = ["Paris is the capital of France. " * 50, "Lyon"]
    f = tmp_path / "docs.json"
    f.write_text(json.dumps(docs))
    args = ["--max-length", "150", "--long-documents", "chunk", "--chunk-overlap", "20"]
    proc = run(["--model", str(model_dir), "--query", QUERY, "--documents", str(f), *args])
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    want = reranker.rank(QUERY, docs, max_length=150, long_documents="chunk", chunk_overlap=20)
    want = want.to_dict()
    facts = [(r["index"], r["windows"], r["best_span"], r["tokens"]) for r in out["results"]]
    assert facts == [
        (r["index"], r["windows"], r["best_span"], r["tokens"]) for r in want["results"]
    ]
    assert out["usage"] == want["usage"] and out["usage"]["windows"] > 2


def test_read_documents():
    assert read_documents('["a", "b"]') == ["a", "b"]
    assert read_documents("a\n\nb\n") == ["a", "b"]
    assert read_documents("a\r\n\r\nb\r\n") == ["a", "b"]
    with pytest.raises(ValueError, match="JSON"):
        read_documents("[oops")


def run_with_terminal_stderr(args: list[str], stdin: str) -> tuple[int, str, str]:
    """The CLI with stderr on a pseudo-terminal (as in a shell) and stdout on a pipe."""
    import os
    import pty

    leader, follower = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    proc = subprocess.Popen(
        [sys.executable, "-m", "reranker", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
    )
    os.close(follower)
    out, _ = proc.communicate(stdin, timeout=120)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


@pytest.mark.subprocess
@pytest.mark.parametrize("quiet", [False, True])
def test_progress_bar_on_a_terminal_and_json_alone_on_stdout(model_dir, quiet):
    """Fault seen failing: show_progress() returning False always (no bar on a terminal) and
    the bar drawn on stdout (the JSON no longer parses)."""
    docs = [f"document {i} about {w}" for i, w in enumerate(["tea", "rivers", "cities"] * 20)]
    args = ["--model", str(model_dir), "--query", QUERY, "--documents", "-", "--device", "cpu"]
    code, out, err = run_with_terminal_stderr(args + ["--quiet"] * quiet, "\n".join(docs))
    assert code == 0, err
    assert len(json.loads(out)["results"]) == 60  # stdout holds the JSON and nothing else
    if quiet:
        assert "tokens/s" not in err
    else:
        assert "60/60" in err and "tokens/s" in err, err


def test_no_progress_bar_when_stderr_is_not_a_terminal(model_dir):
    proc = run(
        ["--model", str(model_dir), "--query", QUERY, "--documents", "-", "--device", "cpu"],
        stdin="\n".join(DOCS),
    )
    assert proc.returncode == 0 and "tokens/s" not in proc.stderr, proc.stderr
