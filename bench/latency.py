"""Where a pass runs, and what a request costs through each front end: rag-20, one at a time.

    uv run python bench/latency.py                  # tiny random model, built on the fly
    uv run python bench/latency.py --requests 60 --out bench/results/latency-cpu-DATE.json
    uv run python bench/latency.py --smoke          # the path runs: 2 requests per row, one process

Every pass runs on a replica worker thread (reranker/runtime/scheduler.py). libgomp keeps an
OpenMP team per thread that ran a parallel region, and two teams wake each other; so each
row runs in a fresh process with torch's default threads, and reports the p50 latency and
the voluntary context switches per request:

* ``pass, caller's thread``: the request's passes (``Engine.run``, no prefix reuse) on the
  thread that loaded the model: what the library did before passes moved to workers;
* ``pass, worker thread``: the same passes on a long-lived thread, after ``Reranker.load``
  (which loads on a thread that ends: ``in_passing_thread``); the goal is within 1.1x;
* ``pass, worker, caller keeps a team``: the same, after the caller's thread ran one
  parallel region of its own (what loading on the caller's thread used to leave);
* ``library rank(), caller's own torch work between calls``: a matmul on the caller's thread
  before each ``rank()`` (untimed), whose team ``rank()`` gives back while it waits
  (reranker/runtime/openmp.py);
* ``library rank()``, ``async service`` (``RerankService.rerank`` on an event loop) and
  ``Cog server`` (``POST /predictions``, devtools.localserver): the whole request.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import workloads  # noqa: E402

MODES = ["pass-caller", "pass-worker", "pass-worker-team", "rank", "rank-team", "service", "cog"]
LABELS = {
    "pass-caller": "pass, caller's thread",
    "pass-worker": "pass, worker thread",
    "pass-worker-team": "pass, worker, caller keeps a team",
    "rank": "library rank()",
    "rank-team": "library rank(), caller's own torch work between calls",
    "service": "async service",
    "cog": "Cog server",
}


def measure(mode: str, model: str, n: int) -> dict:
    """One row, in this (fresh) process."""
    import torch

    from reranker import Reranker, Settings
    from reranker.model.engine import Item
    from reranker.service import RerankService

    requests = _rag(n + 3)
    if mode == "cog":
        from devtools.localserver import LocalCogServer

        server = LocalCogServer({"RERANKER_MODEL": model}, concurrency=4)
        server.start()

        def send(w):
            status, body = server.predict({"query": w.query, "documents": w.documents})
            assert status == 200 and body["status"] == "succeeded", body

        try:
            return _timed(send, requests)
        finally:
            server.stop()
    reranker = Reranker.load(model, device="cpu", settings=Settings())
    if mode.startswith("pass"):
        engine = reranker.engine

        def items(w):
            prepared = reranker.prepare(reranker.request(w.query, w.documents))
            context = tuple(prepared.encoded.context)
            return [Item(context + tuple(d)) for d in prepared.encoded.documents]

        batches = [items(w) for w in requests]
        if mode == "pass-caller":
            return _timed(engine.run, batches)
        if mode == "pass-worker-team":
            torch.ones(512, 512) @ torch.ones(512, 512)
        with ThreadPoolExecutor(1) as worker:
            return _timed(lambda b: worker.submit(engine.run, b).result(), batches)
    if mode == "rank":
        return _timed(lambda w: reranker.rank(w.query, w.documents), requests)
    if mode == "rank-team":  # the caller's matmul makes it a team; rank() gives it back

        def after_own_work(w):
            torch.ones(512, 512) @ torch.ones(512, 512)
            return reranker.rank(w.query, w.documents)

        return _timed(after_own_work, requests)
    service = RerankService(reranker)
    loop = asyncio.new_event_loop()

    def serve(w):
        request = reranker.request(w.query, w.documents)
        loop.run_until_complete(service.rerank(request, say=lambda _: None))

    return _timed(serve, requests)


@functools.cache
def _rag(n: int) -> list:
    """rag-20 requests (one tokenizer build per process: --smoke measures every row in one)."""
    from devtools.offline import build_tokenizer

    return workloads.rag(build_tokenizer(), 20, n)


def in_fresh_process(mode: str, model: str, n: int) -> dict:
    """One row in a fresh process (``--mode``)."""
    cmd = [sys.executable, __file__, "--mode", mode, "--model", model, "--requests", str(n)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{mode}: exit {out.returncode}\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _timed(run, items) -> dict:
    for item in items[:3]:  # warm-up
        run(item)
    latencies = []
    before = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    for item in items[3:]:
        started = time.perf_counter()
        run(item)
        latencies.append(time.perf_counter() - started)
    switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - before
    return {
        "p50_ms": 1000 * statistics.median(latencies),
        "switches_per_request": switches / len(latencies),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model directory (default: a tiny random Qwen3)")
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--out", help="also write the rows as JSON here")
    p.add_argument(
        "--smoke", action="store_true", help="2 requests per row, all rows in this process"
    )
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one row, in-process
    args = p.parse_args()
    if args.mode:
        print(json.dumps(measure(args.mode, args.model, args.requests)))
        return 0
    n = 2 if args.smoke else args.requests
    with tempfile.TemporaryDirectory() as tmp:
        from devtools.offline import save_random_model

        model = args.model or str(save_random_model(Path(tmp) / "tiny", initializer_range=0.3))
        run = measure if args.smoke else in_fresh_process
        rows = {mode: run(mode, model, n) for mode in MODES}
    cpu = platform.processor() or platform.machine()
    where = "all rows in one process (--smoke)" if args.smoke else "each row a fresh process"
    print(
        f"# rag-20, {n} requests per row, one at a time, {where}; {cpu}, "
        f"{os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    print("| row | p50 ms | voluntary context switches per request |")
    print("|---|---|---|")
    for mode, row in rows.items():
        print(f"| {LABELS[mode]} | {row['p50_ms']:.1f} | {row['switches_per_request']:.0f} |")
    worker = rows["pass-worker"]["p50_ms"] / rows["pass-caller"]["p50_ms"]
    gap = rows["cog"]["p50_ms"] - rows["rank"]["p50_ms"]
    print(f"# worker pass / caller's-thread pass: {worker:.2f}x (goal <= 1.1x)")
    print(f"# Cog server p50 - library p50: {gap:+.1f} ms (goal <= 10 ms)")
    own = rows["rank-team"]["p50_ms"] / rows["rank"]["p50_ms"]
    print(f"# rank() after the caller's own torch work / rank(): {own:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"requests": n, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
