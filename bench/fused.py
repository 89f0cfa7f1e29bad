"""Fused projections (q/k/v and gate/up as one GEMM each) against the per-projection GEMMs.

    uv run python bench/fused.py [--reps N]
    uv run python bench/fused.py --smoke       # seconds: the tiny model, small workloads, 1 rep

Both variants run in one process on the same model (CPU_SCALE, float32) and the same token
ids, interleaved (ABBA per repetition), so that load from other processes on a shared machine
hits both alike; the medians and the per-repetition ratios are printed. The unfused variant is
the layer math as it was before the fusion (three q/k/v GEMMs, two gate/up GEMMs), on row
views of the same fused weights.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import workloads  # noqa: E402
from run import cpu_scale_setup, ours  # noqa: E402

from reranker import Settings  # noqa: E402
from reranker.model.layers import Linear  # noqa: E402
from reranker.model.scorer import _rotate  # noqa: E402


def unfused_inputs(h, ln, wq, wk, wv, qn, kn, cos, sin, eps, nx):
    t, dim = h.shape[0], qn.shape[0]
    x = nx.norm(h, ln, eps)
    q = nx.norm(nx.linear(x, wq).view(t, -1, dim), qn, eps)
    k = nx.norm(nx.linear(x, wk).view(t, -1, dim), kn, eps)
    v = nx.linear(x, wv).view(t, -1, dim)
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    return tuple(nx.attention_input(y, ln.dtype) for y in (q, k, v))


def unfused_output_and_mlp(h, o, wo, ln, wg, wu, wd, eps, nx):
    h = h + nx.linear(o.flatten(1), wo)
    x = nx.norm(h, ln, eps)
    return h + nx.linear(F.silu(nx.linear(x, wg)) * nx.linear(x, wu), wd)


def unfuse(reranker) -> None:
    """Switch a scorer to the per-projection GEMMs (views of its fused weights)."""
    scorer = reranker.engine.scorer
    weights = []
    for pre, post in scorer.layer_weights:
        ln, qkv, qn, kn, sizes = pre
        q, k, v = (Linear(w, None) for w in qkv.weight.split(sizes))
        wo, ln2, gate_up, down = post
        g, u = (Linear(w, None) for w in gate_up.weight.chunk(2))
        weights.append(((ln, q, k, v, qn, kn), (wo, ln2, g, u, down)))
    scorer.layer_weights = weights
    scorer._pre, scorer._post = unfused_inputs, unfused_output_and_mlp


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="the tiny model, small workloads, 1 rep")
    args = p.parse_args()
    if args.smoke:
        args.reps = 1
    tokenizer, encoder, model = cpu_scale_setup(args.smoke)
    fused = ours(model, encoder, Settings())
    unfused = ours(model, encoder, Settings())
    unfuse(unfused)
    n = (4, 8) if args.smoke else (100, 1000)
    work = [workloads.standard(tokenizer, n=n[0]), workloads.short(tokenizer, n=n[1])]
    for w in work:
        a = fused.score(w.query, w.documents, instruction=w.instruction, max_length=w.max_length)
        b = unfused.score(w.query, w.documents, instruction=w.instruction, max_length=w.max_length)
        diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
        print(f"# {w.name}: {len(w.documents)} documents, max |fused - unfused score| {diff:.1e}")
        times: dict[str, list[float]] = {"fused": [], "unfused": []}
        for rep in range(args.reps):
            order = [("fused", fused), ("unfused", unfused)]
            for name, r in order if rep % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                r.score(w.query, w.documents, instruction=w.instruction, max_length=w.max_length)
                times[name].append(time.perf_counter() - started)
        ratios = [u / f for f, u in zip(times["fused"], times["unfused"], strict=True)]
        print(
            f"{w.name:<10} fused {statistics.median(times['fused']):6.2f}s | unfused "
            f"{statistics.median(times['unfused']):6.2f}s | unfused/fused per repetition: "
            + " ".join(f"{x:.2f}" for x in ratios)
            + f" (median {statistics.median(ratios):.2f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
