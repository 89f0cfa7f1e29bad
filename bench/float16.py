"""float16 drift and cost: the recipe's own float16 rounding vs this package's float32 residual.

    uv run python bench/float16.py            # CPU: drift on tiny models, cost on CPU_SCALE
    uv run python bench/float16.py --smoke    # seconds: one drift model, cost on the tiny one

Drift: max and mean |score - float32 recipe score|, Spearman and top-3 overlap (the columns of
``python -m tools.drift``) on the tiny models of tests/test_float16.py
(an ordinary one, three whose residual stream passes 65,504, one whose value projection does),
for float16 with the recipe's rounding (``native``; the safe mode re-scores what overflows),
float16 with a float32 residual (the default) and bfloat16. Cost: seconds for the standard
workload on the CPU-scale model in each float16 mode. On CPU the 16-bit GEMMs are emulated in
float32, so CPU seconds say nothing about a GPU: bench/run.py's "float16 numerics" section
measures the GPU cost.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import test_float16 as cases  # noqa: E402
import workloads  # noqa: E402
from run import build_model, ours  # noqa: E402

from devtools.offline import build_tokenizer  # noqa: E402
from reranker import Settings  # noqa: E402
from reranker.text.tokenization import PromptEncoder  # noqa: E402
from tools.drift import metrics as drift_metrics  # noqa: E402
from tools.drift import report as drift_report  # noqa: E402


def drift_table(tokenizer, smoke: bool = False) -> None:
    """The columns of ``python -m tools.drift`` (its metric functions and table), against
    the model card's code in float32; top-3 overlap, as there are six documents."""
    shapes = {"ordinary": None, **cases.SHAPES, "value_overflow": cases.value_overflow}
    if smoke:
        shapes = {"value_overflow": cases.value_overflow}  # the safe mode re-scores here
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape in shapes.items():
            path = cases.save_model(Path(tmp) / name, tokenizer, shape)
            want = drift_metrics.Scored(cases.recipe_scores(path))
            for dtype, numerics in (
                ("float16", "native"),
                ("float16", "auto"),
                ("bfloat16", "auto"),
            ):
                r = cases.load(path, dtype, numerics=numerics)
                started = time.perf_counter()
                got = drift_metrics.Scored(r.score(cases.QUERY, cases.DOCS))
                rows.append(
                    drift_metrics.summarize(
                        f"{name}: {dtype} {r.engine.scorer.numerics.name}",
                        [drift_metrics.request_drift(want, got, k=3)],
                        k=3,
                        dtype=dtype,
                        seconds=time.perf_counter() - started,
                        note=f"re-scored {r.engine.rescored}",
                    )
                )
                print(f"# {rows[-1].mode}: done", flush=True)
    print("# reference: the model card's code in float32 (devtools/reference.py)")
    print(drift_report.format_table(rows), flush=True)


def cost(tokenizer, smoke: bool = False) -> None:
    encoder = PromptEncoder(tokenizer)
    model = build_model("cpu", torch.float16, quick=False, smoke=smoke)
    w = workloads.standard(tokenizer, n=4 if smoke else 100)
    size = "tiny model" if smoke else "CPU_SCALE"
    for numerics in ("native", "float32-residual", "native", "float32-residual"):
        r = ours(model, encoder, Settings(), numerics=numerics)
        started = time.perf_counter()
        r.score(w.query, w.documents, instruction=w.instruction, max_length=w.max_length)
        seconds = time.perf_counter() - started
        print(f"standard workload, {size} float16 {numerics:<17}: {seconds:.2f}s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--smoke", action="store_true", help="one drift model, the tiny model's cost")
    smoke = p.parse_args().smoke
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M %Z')} | cpu ({platform.machine()}, "
        f"{torch.get_num_threads()} threads) | torch {torch.__version__}"
    )
    tokenizer = build_tokenizer()
    drift_table(tokenizer, smoke)
    cost(tokenizer, smoke)


if __name__ == "__main__":
    main()
