"""The offline commands of the README, docs/ and CONTRIBUTING.md work as written (with `uv run`
being this environment); the others are listed with the reason no test can run them."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.localserver import free_port

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
# The pages whose ```bash blocks are commands a reader runs: each line is run by a test here
# (or in tests/test_serve_clients.py) or listed in NOT_RUN_HERE with the reason.
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent


def page(name: str) -> str:
    """The text of one page, by its path from the repository root (``docs/usage.md``)."""
    return (ROOT / name).read_text()


def readme_commands() -> list[str]:
    """Every command line of every page's ```bash blocks, in page order."""
    blocks = [b for p in PAGES for b in re.findall(r"```bash\n(.*?)```", p.read_text(), re.S)]
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def as_written(command: str) -> tuple[list[str], dict[str, str]]:
    """A shell line ``[NAME=value ...] uv run X ...`` as argv and environment: `uv run X`
    runs X from this environment (the tests already run inside `uv run`), which it puts
    first on PATH, as `uv run` does."""
    argv = shlex.split(command)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANKER_")}
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
        name, _, value = argv.pop(0).partition("=")
        env[name] = value
    assert argv[:2] == ["uv", "run"], command
    argv = argv[2:]
    if (BIN / argv[0]).exists():
        argv[0] = str(BIN / argv[0])
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return argv, env


def run_as_written(command: str, cwd: Path) -> subprocess.CompletedProcess:
    argv, env = as_written(command)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


# Commands of the pages that no test can run here (no network, no Docker, no GPU), and why.
NOT_RUN_HERE = {
    "uv sync": "installs the environment the tests run in",
    "uv run ruff check . && uv run ruff format --check .": "the lint, which .ci/run runs",
    "uv run python bench/gpu_all.py --smoke": "tests/test_bench_smoke.py runs every --smoke",
    "uv run rerank --model Qwen/": "downloads the 16 GB checkpoint",
    "uv run python -m tools.drift --model Qwen/": "needs the 16 GB checkpoint",
    "uv run pytest": "the test suite itself",
    "cog ": "needs Docker and the Cog CLI",
    "sudo curl -o /usr/local/bin/cog ": "installs the Cog CLI, which needs Docker",
    "uv run script/download-weights": "downloads the 16 GB checkpoint",
    "curl -s -X POST https://api.replicate.com": "needs a Replicate account",
    "  -H ": "continues the line above",
    "  -d ": "continues the line above",
    "python3 bench/run.py --device cuda": "needs a GPU",
    "sh bench/gpu_prepare.sh": "downloads wheels from PyPI for the GPU machine",
    "# on the GPU machine": "a comment",
    "python3 -m pip install -q --no-index": "runs on the GPU machine (its --smoke is tested)",
    "  --target /tmp/site": "continues the line above",
    "  python3 bench/gpu_all.py": "continues the line above",
    "docker run --gpus all": "needs Docker, a GPU and a built image",
    "  http://127.0.0.1:8080/v2/rerank": "continues the line above",
}


def is_tiny_model_command(command: str) -> bool:
    return command.startswith("uv run") and "tiny-model" in command


def is_help_command(command: str) -> bool:
    return command == "uv run rerank --help"


def is_local_server_command(command: str) -> bool:
    return (
        "cog.server.http" in command
        or command.startswith("curl -s http://127.0.0.1")
        or (command.startswith("curl -s -X POST http://127.0.0.1"))
    )


def is_serve_command(command: str) -> bool:
    """Self-hosting's server and curl lines: run by tests/test_serve_clients.py."""
    return (" rerank serve " in command and "tiny-model" in command) or command.startswith(
        'curl -s -H "Authorization: Bearer my-key"'
    )


def test_every_readme_command_is_run_by_a_test_or_explained():
    """Every ```bash line of README.md, CONTRIBUTING.md and docs/*.md is run by a test or listed
    in NOT_RUN_HERE with its reason, never both.

    Fault seen failing: docs/usage.md with a second command line `uv run rerank serve --help`."""
    for command in readme_commands():
        run = is_tiny_model_command(command) or is_help_command(command)
        run = run or is_local_server_command(command) or is_serve_command(command)
        explained = any(command.startswith(prefix) for prefix in NOT_RUN_HERE)
        assert run != explained, f"command neither tested nor explained: {command!r}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A fresh folder laid out like the project root, where the README's first offline
    command has made `tiny-model`."""
    folder = tmp_path_factory.mktemp("readme")
    for name in ("examples", "predict.py", "reranker", "tools", "cog.yaml"):
        (folder / name).symlink_to(ROOT / name)
    make = [c for c in readme_commands() if is_tiny_model_command(c) and "devtools.offline" in c]
    assert make, "the README shows how to make the tiny model"
    proc = run_as_written(make[0], folder)
    assert proc.returncode == 0, proc.stderr
    assert (folder / "tiny-model" / "config.json").is_file()
    return folder


def test_quick_start_offline_commands(workdir):
    commands = [c for c in readme_commands() if is_tiny_model_command(c)]
    rank = [c for c in commands if c.startswith("uv run rerank --model tiny-model")]
    assert rank, "the README shows how to try the tiny model"
    for command in rank:
        proc = run_as_written(command, workdir)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        documents = json.loads((ROOT / "examples" / "documents.json").read_text())
        assert out["total_documents"] == len(documents)
        assert len(out["results"]) == 3
        assert all(0.0 <= r["score"] <= 1.0 for r in out["results"])


def test_drift_command_as_written(workdir):
    """The tiny-model line of "Check drift on your own data" (docs/scoring.md) runs as written
    and prints one row per mode after the float32 reference, for every request of
    examples/requests.jsonl.

    Fault seen failing: examples/requests.jsonl with "document" for "documents" on one line."""
    (command,) = [c for c in readme_commands() if c.startswith("uv run python -m tools.drift")
                  and is_tiny_model_command(c)]  # fmt: skip
    proc = run_as_written(command, workdir)
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.strip().splitlines()
    assert [c.strip() for c in header.split(" | ")][:8] == [
        "mode", "dtype", "requests", "documents", "max |Δ score|", "mean |Δ score|", "Spearman",
        "top-10 overlap",
    ]  # fmt: skip
    cells = [[c.strip() for c in row.split(" | ")] for row in rows]
    modes = command.split("--modes ")[1].split()[0].split(",")
    assert [c[0] for c in cells] == ["float32 (reference)", *modes]
    lines = (ROOT / "examples" / "requests.jsonl").read_text().splitlines()
    documents = sum(len(json.loads(line)["documents"]) for line in lines)
    for c in cells:
        assert c[2:4] == [str(len(lines)), str(documents)], c
        assert 0.0 <= float(c[4]) < 0.1 and -1.0 <= float(c[6]) <= 1.0, c


def test_cli_help_as_written(workdir):
    (command,) = [c for c in readme_commands() if is_help_command(c)]
    proc = run_as_written(command, workdir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: rerank")
    for option in ("--model", "--query", "--documents", "--top-k"):
        assert option in proc.stdout


def test_examples_request_is_a_valid_input(reranker):
    request = json.loads((ROOT / "examples" / "request.json").read_text())
    kwargs = {k: v for k, v in request.items() if k not in ("query", "documents")}
    result = reranker.rank(request["query"], request["documents"], **kwargs)
    assert len(result.results) == request["top_k"]


def test_configuration_table_lists_every_setting():
    from dataclasses import fields

    from reranker.config import Settings

    documented = set(re.findall(r"\| `(RERANKER_[A-Z_]+)` \|", page("docs/configuration.md")))
    assert {f"RERANKER_{f.name.upper()}" for f in fields(Settings)} == documented


def local_curl_input() -> dict:
    curl = next(c for c in readme_commands() if c.startswith("curl -s -X POST http://127.0.0.1"))
    return json.loads(shlex.split(curl)[-1])["input"]


def test_local_cog_server_and_curl_commands_as_written(workdir):
    """docs/usage.md's "The local Cog server": the server command and both curl lines, word for
    word (the port alone is swapped for a free one, in all three alike)."""
    assert shutil.which("curl"), "the README's commands need curl (.ci/run installs it)"
    commands = [c for c in readme_commands() if is_local_server_command(c)]
    (server,) = [c for c in commands if "cog.server.http" in c]
    health, post = [c for c in commands if c.startswith("curl")]
    port = re.search(r"\bPORT=(\d+) ", server).group(1)
    assert health == f"curl -s http://127.0.0.1:{port}/health-check"
    assert post.startswith(f"curl -s -X POST http://127.0.0.1:{port}/predictions ")
    assert server.endswith(" --host 127.0.0.1")  # never every interface
    free = str(free_port())
    argv, env = as_written(server.replace(f"PORT={port} ", f"PORT={free} "))

    def curl(command: str) -> subprocess.CompletedProcess:
        line = command.replace(f"127.0.0.1:{port}/", f"127.0.0.1:{free}/")
        return subprocess.run(shlex.split(line), capture_output=True, text=True, timeout=120)

    log = workdir / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            answer = curl(health)
            status = json.loads(answer.stdout).get("status") if answer.returncode == 0 else None
            assert status != "SETUP_FAILED", answer.stdout
            if status == "READY":
                break
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        answer = curl(post)
        assert answer.returncode == 0, answer.stderr
        body = json.loads(answer.stdout)
        assert body["status"] == "succeeded", body
        sent = json.loads(shlex.split(post)[-1])["input"]
        results = body["output"]["results"]
        assert len(results) == sent["top_k"] == 2
        assert sorted(r["index"] for r in results) == [0, 1]
        assert [r["document"] for r in results] == [sent["documents"][r["index"]] for r in results]
        assert results[0]["logit"] >= results[1]["logit"]
        assert all(0.0 <= r["score"] <= 1.0 for r in results)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


# -- links ------------------------------------------------------------------------------------

LINKED_PAGES = [*PAGES, ROOT / "CHANGELOG.md"]


def prose(text: str) -> str:
    """``text`` without fenced code blocks and with each code span reduced to ``code``."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "code", text)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but ``-`` and ``_`` dropped,
    spaces to ``-``: ``Concurrency: serving many callers`` -> ``concurrency-serving-many-callers``.
    """
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a markdown page (a repeated slug gets -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = github_slug(heading)
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def relative_links(path: Path) -> list[str]:
    targets = re.findall(r"\]\(([^)\s]+)\)", prose(path.read_text()))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in relative_links(path):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            broken.append(f"{target} (no such heading)")
    return broken


def test_readme_is_a_front_page():
    """At most 250 lines and 1,500 words (issue #30): the rest lives in docs/."""
    assert len(README.splitlines()) <= 250 and len(README.split()) <= 1500


def test_github_slugs():
    assert github_slug("Concurrency: serving many callers") == "concurrency-serving-many-callers"
    assert github_slug("FP8 (experimental)") == "fp8-experimental"
    assert github_slug("Settings of `rerank serve`") == "settings-of-rerank-serve"
    assert github_slug("HTTP overhead: rerank serve and the Cog server") == (
        "http-overhead-rerank-serve-and-the-cog-server"
    )


@pytest.mark.parametrize("path", LINKED_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    """Every relative link of the README, docs/, CONTRIBUTING.md and CHANGELOG.md names a file
    that exists, and its #anchor a heading of that page.

    Fault seen failing: docs/usage.md linking to ``long-documents.md#chunking`` (no such
    heading), and README.md to ``docs/usage.mdx`` (no such file)."""
    assert path.exists()
    assert relative_links(path) or path.name == "CHANGELOG.md", "a page that links nowhere"
    broken = broken_links(path)
    assert not broken, f"{path.relative_to(ROOT)}: {broken}"
