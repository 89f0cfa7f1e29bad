"""Cached prompt prefixes of 16 concurrent long-query requests: what one replica holds.

    uv run python bench/prefix_memory.py                         # CPU, CPU_SCALE model, 1/4 scale
    uv run python bench/prefix_memory.py --device cuda --scale 1  # the 8B shape, on a GPU
    uv run python bench/prefix_memory.py --smoke                 # seconds: tiny model, 1/64 scale

16 requests arrive at once through the async road (as the Cog server sends them), each with a
query of about ``30,000 / scale`` tokens (each prefix alone over the bound), then of
``4,000 / scale`` (four fit at once), and 8 short documents, prefix reuse on. Each run twice:
with ``RERANKER_MAX_PREFIX_TOKENS`` at its default divided by ``scale``, and with no bound
(10^12). Reported per run: the most prefix tokens the replica held at once (the scheduler's
``prefix_peak``), what that is in keys and values for this model and for Qwen3-Reranker-8B in
16 bits (144 KiB a token), the wall time, and on CUDA the peak allocated device memory. The
two runs' logits must agree (the bound changes when a request runs, not what it computes).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import torch  # noqa: E402
from run import build_model, cpu_scale_setup, ours  # noqa: E402

from devtools.offline import build_tokenizer  # noqa: E402
from reranker import Settings  # noqa: E402
from reranker.text.tokenization import PromptEncoder  # noqa: E402

KV_BYTES_8B = 2 * 36 * 8 * 128 * 2  # layers x kv heads x head dim, keys and values, 16 bits
REQUESTS = 16


def query_of(tokenizer, tokens: int, seed: int) -> str:
    """A query of about ``tokens`` tokens (distinct per request)."""
    sample = " ".join(f"topic{seed}x{i}" for i in range(1000))
    per_word = len(tokenizer.encode(sample, add_special_tokens=False)) / 1000
    return " ".join(f"topic{seed}x{i}" for i in range(int(tokens / per_word)))


async def run_all(reranker, requests):
    prepared = [reranker.prepare(r) for r in requests]
    started = time.perf_counter()
    out = await asyncio.gather(*(reranker.alogits(p) for p in prepared), return_exceptions=True)
    # without the bound a GPU may run out of memory: such requests fail (reported, not raised)
    return [o if isinstance(o, BaseException) else o[0] for o in out], time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--scale", type=int, default=4, help="divide query length and bound by this")
    p.add_argument("--smoke", action="store_true", help="CPU, the tiny model, --scale 64")
    args = p.parse_args()
    if args.smoke:
        args.device, args.scale = "cpu", 64
    if args.device == "cuda":
        tokenizer = build_tokenizer()
        encoder = PromptEncoder(tokenizer)
        model = build_model("cuda", torch.float16, quick=False)
        print(f"# cuda {torch.cuda.get_device_name()} | torch {torch.__version__} | 8B shape")
    else:
        tokenizer, encoder, model = cpu_scale_setup(args.smoke)
    bound = Settings.max_prefix_tokens // args.scale
    max_length = 32768 // args.scale
    base = Settings(device=args.device, prefix_reuse="on", max_query_chars=10**6)
    docs = [f"document {i} about topic {i % 3}, with a few words of text" for i in range(8)]
    for query_tokens in (30_000 // args.scale, 4_000 // args.scale):
        print(
            f"## {REQUESTS} requests at once, queries of ~{query_tokens:,} tokens, 8 documents "
            f"each, max_length {max_length:,}",
            flush=True,
        )
        results = {}
        for label, limit in [("bounded", bound), ("no bound", 10**12)]:
            reranker = ours(model, encoder, replace(base, max_prefix_tokens=limit))
            requests = [
                reranker.request(query_of(tokenizer, query_tokens, i), docs, max_length=max_length)
                for i in range(REQUESTS)
            ]
            contexts = [len(reranker.prepare(r).encoded.context) for r in requests]
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            logits, seconds = asyncio.run(run_all(reranker, requests))
            reranker.close()
            peak = reranker.scheduler.prefix_peak[0]
            kv = reranker.engine.scorer.kv_bytes_per_token
            line = (
                f"{label:<8} (max_prefix_tokens={limit:,}): held at most {peak:,} prefix tokens "
                f"of {sum(contexts):,} in flight = {peak * kv / 2**30:.2f} GiB for this model, "
                f"{peak * KV_BYTES_8B / 2**30:.2f} GiB for the 8B in 16 bits; {seconds:.1f} s"
            )
            if args.device == "cuda":
                added = (torch.cuda.max_memory_allocated() - before) / 2**30
                line += f"; peak device memory +{added:.2f} GiB over the weights"
            failed = [x for x in logits if isinstance(x, BaseException)]
            if failed:
                line += f"; {len(failed)} requests failed: {failed[0]}"
            print(line, flush=True)
            results[label] = logits
        diff = max(
            (
                abs(a - b)
                for x, y in zip(results["bounded"], results["no bound"], strict=True)
                if not isinstance(x, BaseException) and not isinstance(y, BaseException)
                for a, b in zip(x, y, strict=True)
            ),
            default=float("nan"),
        )
        print(f"max |Δlogit| bounded vs no bound: {diff:.2e}", flush=True)


if __name__ == "__main__":
    main()
