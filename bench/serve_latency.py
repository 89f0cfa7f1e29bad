"""`rerank serve` beside the Cog server and the library: rag-20 latency and throughput.

    uv run python bench/serve_latency.py                    # tiny random model, built on the fly
    uv run python bench/serve_latency.py --requests 60 --out bench/results/serve-cpu-DATE.json
    uv run python bench/serve_latency.py --smoke            # seconds: 6 requests, 2 clients

The same rag-20 requests (bench/workloads.py: 20 passages of 128-384 tokens, a fresh query
each) go, in the same run, to the library (``Reranker.rank``), to the Cog server
(``POST /predictions``) and to ``rerank serve`` (``POST /v1/rerank``), all with the same
model. First one request at a time: p50/p95 latency, and a server's overhead per request, the
median of its latency minus the library's for the same request sent back to back (a
1-document probe shows it where the model costs least). Then from 8 clients at once:
requests/s, and the merge gain over one at a time. Every answer must equal the library's solo
result (indices, scores within 1e-5). Both servers are up together, but only one target works
at a time and they take turns, request by request and burst by burst, so that other load on
the machine falls on all three alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# torch on one thread in all three targets (the servers inherit it), unless OMP_NUM_THREADS
# says otherwise: on this shared 2-core machine two OpenMP threads per process are up to 10x
# slower under other load (a rag-20 request: 1.5-1.9 s against 0.17-0.20 s on one thread,
# measured 2026-12-07 at load average 7), which would swamp what is measured here.
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import workloads  # noqa: E402

from devtools.apiserver import LocalRerankServer  # noqa: E402
from devtools.localserver import LocalCogServer  # noqa: E402
from devtools.offline import build_tokenizer, save_random_model  # noqa: E402
from reranker import Reranker, Settings  # noqa: E402

Ranked = list[tuple[int, float]]  # (index, score) in rank order
Send = Callable[[workloads.Workload], Ranked]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def equal(got: Ranked, want: Ranked, tol: float = 1e-5) -> bool:
    return [i for i, _ in got] == [i for i, _ in want] and all(
        abs(a - b) <= tol for (_, a), (_, b) in zip(got, want, strict=True)
    )


def one_at_a_time(targets: dict[str, Send], requests, want) -> dict[str, dict]:
    """Each request to every target in turn (the order rotating), so that load from other
    processes on the machine falls on all of them alike."""
    latencies: dict[str, list[float]] = {name: [] for name in targets}
    same = dict.fromkeys(targets, True)
    names = list(targets)
    for i, w in enumerate(requests):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            started = time.perf_counter()
            got = targets[name](w)
            latencies[name].append(time.perf_counter() - started)
            same[name] &= equal(got, want[i])
    base = latencies[names[0]]
    return {
        name: {
            "p50_ms": 1000 * statistics.median(lat),
            "p95_ms": 1000 * percentile(lat, 0.95),
            "solo_rps": len(lat) / sum(lat),
            # the same request, back to back: slow drifts in the machine's load cancel out
            "overhead_ms": 1000 * statistics.median(a - b for a, b in zip(lat, base, strict=True)),
            "equal_to_library": same[name],
        }
        for name, lat in latencies.items()
    }


def concurrent(targets: dict[str, Send], requests, want, clients: int, rounds: int):
    """Requests/s with ``clients`` senders, the median of ``rounds`` bursts per target (the
    targets' order rotating between rounds)."""
    seconds: dict[str, list[float]] = {name: [] for name in targets}
    same = dict.fromkeys(targets, True)
    names = list(targets)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                answers = list(pool.map(targets[name], requests))
            seconds[name].append(time.perf_counter() - started)
            same[name] &= all(equal(a, w) for a, w in zip(answers, want, strict=True))
    return {
        name: {"clients_rps": len(requests) / statistics.median(s), "equal_merged": same[name]}
        for name, s in seconds.items()
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model directory (default: a tiny random Qwen3)")
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3, help="bursts per target at --clients")
    p.add_argument("--out", help="also write the figures here as JSON")
    p.add_argument("--smoke", action="store_true", help="--requests 6 --clients 2 --rounds 1")
    args = p.parse_args()
    if args.smoke:
        args.requests, args.clients, args.rounds = 6, 2, 1
    tmp = tempfile.TemporaryDirectory()
    model = args.model or str(save_random_model(Path(tmp.name) / "tiny", initializer_range=0.3))
    requests = workloads.rag(build_tokenizer(), 20, args.requests)
    library = Reranker.load(model, device="cpu", settings=Settings())

    def by_library(w) -> Ranked:
        result = library.rank(w.query, w.documents, instruction=w.instruction, top_k=0)
        return [(r.index, r.score) for r in result.results]

    want = [by_library(w) for w in requests]
    cog = LocalCogServer({"RERANKER_MODEL": model}, concurrency=16)
    serve = LocalRerankServer(model)
    with ThreadPoolExecutor(2) as pool:  # both start at once (each takes seconds to load)
        started = [pool.submit(server.start) for server in (cog, serve)]
    try:
        for future in started:
            future.result()

        def by_cog(w) -> Ranked:
            inputs = {"query": w.query, "documents": w.documents, "instruction": w.instruction}
            status, body = cog.predict({**inputs, "top_k": 0}, timeout=600, retry_409_for=600)
            assert status == 200 and body["status"] == "succeeded", body
            return [(r["index"], r["score"]) for r in body["output"]["results"]]

        def by_serve(w) -> Ranked:
            body = {"query": w.query, "documents": w.documents, "instruction": w.instruction}
            status, answer = serve.post("/v1/rerank", body, timeout=600)
            assert status == 200, answer
            return [(r["index"], r["relevance_score"]) for r in answer["results"]]

        targets = {"library": by_library, "Cog server": by_cog, "rerank serve": by_serve}
        for send in targets.values():  # warm-up
            for w in requests[:4]:
                send(w)
        probe = [
            workloads.Workload("probe", ["Paris."], 8192, query=f"q{i}")
            for i in range(args.requests)
        ]
        probes = one_at_a_time(targets, probe, [by_library(w) for w in probe])
        passes = serve.metric("reranker_forward_pass_seconds_count")
        rows = one_at_a_time(targets, requests, want)
        solo_passes = serve.metric("reranker_forward_pass_seconds_count") - passes
        merged = concurrent(targets, requests, want, args.clients, args.rounds)
        merged_passes = serve.metric("reranker_forward_pass_seconds_count") - passes - solo_passes
    finally:
        cog.stop()
        serve.stop()
    library.close()
    for name, row in rows.items():
        row.update(merged[name], target=name, probe_overhead_ms=probes[name]["overhead_ms"])
        row["probe_p50_ms"] = probes[name]["p50_ms"]
        row["merge_gain"] = row["clients_rps"] / row["solo_rps"]
        row["equal_to_library"] = row["equal_to_library"] and row.pop("equal_merged")
    cpu = platform.processor() or platform.machine()
    print(
        f"# rag-20: {args.requests} requests of 20 passages, one at a time, then {args.clients} "
        f"clients (median of {args.rounds} rounds); {cpu}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    )
    print(
        "| target | p50 ms | p95 ms | overhead ms | req/s one at a time | "
        f"req/s at {args.clients} clients | merge gain | equal to library | "
        "1-document probe: p50 ms | probe overhead ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows.values():
        print(
            f"| {r['target']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['overhead_ms']:+.1f} "
            f"| {r['solo_rps']:.2f} | {r['clients_rps']:.2f} | {r['merge_gain']:.2f}x | "
            f"{'yes' if r['equal_to_library'] else 'NO'} | {r['probe_p50_ms']:.1f} | "
            f"{r['probe_overhead_ms']:+.1f} |"
        )
    print(
        "# overhead: the median, over the requests, of (target - library) for the same request "
        "sent back to back; the probe is a 1-document request, where the model costs least"
    )
    per_round = merged_passes / args.rounds
    print(
        f"# rerank serve's forward passes: {solo_passes:.0f} one at a time, {per_round:.0f} per "
        f"{args.clients}-client round, for the same {args.requests} requests"
    )
    ok = all(r["equal_to_library"] for r in rows.values())
    verdict = all(
        rows["rerank serve"][k] <= rows["Cog server"][k]
        for k in ("overhead_ms", "probe_overhead_ms")
    )
    print(
        f"# rerank serve's overhead per request <= the Cog server's: {'yes' if verdict else 'NO'}"
    )
    if args.out:
        figures = {"rows": list(rows.values()), "passes": [solo_passes, per_round]}
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
