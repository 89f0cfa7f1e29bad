"""Every bench script runs its ``--smoke`` on CPU: a renamed or broken API fails here, in CI,
not on the next (rare, 15-minute) GPU run.

Each script runs as a user runs it, ``python bench/NAME.py --smoke`` (the tests' tiny model,
small workloads), in its own process group, killed with its children (Cog servers) past its
time box, and must exit 0. bench/run.py exits 1 when a section fails (its sections report
and carry on, so a broken section alone would otherwise pass). The scripts that
bench/gpu_all.py runs as stages (read from its ``plan``) are covered by its smoke, which must
report every stage ok and write its figures with the commit and torch version. Two scripts
run at a time: most of their time goes to starting processes and Cog servers.

Faults seen failing (2026-12-06): ``workloads.rag`` renamed (gpu_all's perf stages exit 1);
``Reranker.with_settings`` renamed (run.py's sweep section fails, exit 1); ``--smoke``
dropped from fused.py's parser (argparse exits 2).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import gpu_all  # noqa: E402

pytestmark = pytest.mark.bench

BOX = 150  # seconds for one script's smoke (each takes 8-35 s alone on 2 CPU cores)
GPU_ALL_DEADLINE = 300  # gpu_all's own --deadline for all its stages (about 85 s alone)


def scripts() -> list[str]:
    """bench/*.py with a command line (a ``__main__`` block)."""
    return sorted(
        p.stem for p in BENCH.glob("*.py") if 'if __name__ == "__main__":' in p.read_text()
    )


def stage_scripts() -> set[str]:
    """The bench scripts gpu_all runs as stages of its own (beside its ``--stage`` ones)."""
    args = argparse.Namespace(device="cpu", tokenizer=None, smoke=True)
    commands = [command for _, command in gpu_all.plan(args, Path("model"))]
    return {Path(c).stem for command in commands for c in command if c.endswith(".py")}


def command(name: str, out: Path) -> list[str]:
    cmd = [sys.executable, str(BENCH / f"{name}.py"), "--smoke"]
    if name == "gpu_all":
        cmd += ["--out", str(out), "--deadline", str(GPU_ALL_DEADLINE)]
    return cmd


@pytest.fixture(scope="module")
def gpu_all_out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gpu-all")


@pytest.fixture(scope="module")
def smokes(gpu_all_out) -> dict[str, tuple[str, float, str]]:
    """name -> (status, seconds, output) for every script's smoke, gpu_all's first."""
    names = sorted(set(scripts()) - (stage_scripts() - {"gpu_all"}), key=lambda n: n != "gpu_all")

    def smoke(name: str) -> tuple[str, float, str]:
        log = io.StringIO()
        box = GPU_ALL_DEADLINE + 60 if name == "gpu_all" else BOX
        status, seconds = gpu_all.run_stage(name, command(name, gpu_all_out), box, log)
        return status, seconds, log.getvalue()

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(names, pool.map(smoke, names), strict=True))


def test_the_bench_scripts_are_found():
    names = scripts()
    assert {"run", "gpu_all", "gpu_check", "soak", "load", "memory"} <= set(names)
    assert "workloads" not in names  # a module, not a script
    assert {"gpu_check", "long_documents"} <= stage_scripts()


@pytest.mark.parametrize("name", sorted(set(scripts()) - stage_scripts()))
def test_smoke(smokes, name):
    status, seconds, output = smokes[name]
    assert status == "ok", (
        f"bench/{name}.py --smoke: {status} after {seconds:.0f}s\n{output[-6000:]}"
    )


def test_gpu_all_smoke_runs_every_stage_and_labels_its_figures(smokes, gpu_all_out):
    status, _, output = smokes["gpu_all"]
    out = gpu_all_out
    results = json.loads((out / "gpu-all.json").read_text())
    stages = {name: s["status"] for name, s in results["stages"].items()}
    assert stages == {name: "ok" for name in gpu_all.BOXES}, output[-6000:]
    assert status == "ok"
    header = results["header"]
    assert header["commit"] not in ("", "unknown") and header["torch"] and header["smoke"]
    text = (out / "gpu-all.txt").read_text()
    assert text.startswith("# date ") and f"torch {header['torch']}" in text.splitlines()[0]
    for name in ("float16", "fp8", "bfloat16"):
        figures = results[name]
        assert figures["standard"]["tokens_per_s"] > 0
        assert figures["rag-20"]["requests"] == figures["rag-100"]["requests"] == 2
        assert {"load", "fusion", "attention", "total"} <= set(figures["setup_s"])
    assert results["fp8"]["quantization"] == "fp8-emulated"
    assert results["float16"]["eager"]["standard"]["tokens_per_s"] > 0
    assert "CHECK parity with the recipe in float32 + fp8: ok" in text
    assert "goal float16 tokens/s 47,000: not judged (--smoke)" in text


def test_gpu_all_judges_the_goals_on_a_gpu_run():
    """The goal lines of a real (not ``--smoke``) run: met, missed, or not measured."""
    figures = {
        "dtype": "float16",
        "quantization": "none",
        "standard": {"tokens_per_s": 40_000.0, "seconds": 1.25, "mfu_hardware": 0.41},
        "rag-20": {"p50_ms": 80.0, "p95_ms": 95.0},
        "rag-100": {"p50_ms": 300.0, "p95_ms": 350.0},
        "compiled": True,
        "setup_s": {"load": 9.0, "compile": 20.0, "total": 31.0},
    }
    lines = gpu_all.summary({"header": {"smoke": False}, "float16": figures})
    assert lines[0].startswith("float16 (float16, quantization none): standard workload 40,000")
    assert "goal float16 tokens/s 47,000: 40,000.0 (missed)" in lines
    assert "goal rag-20 p50 ms (float16) 100: 80.0 (met)" in lines
    assert "goal setup s after weights are on disk (float16) 30: 31.0 (missed)" in lines
    assert "goal fp8 tokens/s 65,000: not measured" in lines
