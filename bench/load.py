"""Load test: K concurrent clients against the real Cog server on 127.0.0.1.

    uv run python bench/load.py                      # tiny random model, built on the fly
    uv run python bench/load.py --model DIR --clients 1,4,16 --requests 96
    uv run python bench/load.py --smoke              # seconds: 1 and 2 clients, 4 requests

Every client sends RAG-sized requests (5-50 documents) one after another; a 409 (every slot
busy) is retried as a real client would. Reported: throughput against the same requests sent
one at a time, errors (must be 0), and whether every answer equals the library's solo result.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.localserver import LocalCogServer  # noqa: E402
from devtools.offline import save_random_model  # noqa: E402
from reranker import Reranker, Settings  # noqa: E402

WORDS = ["tea", "green", "health", "city", "river", "model", "rank", "token", "query", "answer"]


def make_requests(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        docs = [
            " ".join(rng.choices(WORDS, k=rng.randint(20, 160))) for _ in range(rng.randint(5, 50))
        ]
        out.append(
            {
                "query": f"request {i}: {' '.join(rng.choices(WORDS, k=6))}?",
                "documents": docs,
                "top_k": 0,
            }
        )
    return out


def mismatch(body: dict, want: dict, tol: float = 1e-5) -> str | None:
    """Why a server answer differs from the library's solo ``RerankResult.to_dict()``
    (None: same ranking, scores within ``tol``, same documents and usage)."""
    if body.get("status") != "succeeded":
        return f"status {body.get('status')!r}: {str(body.get('error'))[:200]}"
    got, exp = body["output"]["results"], want["results"]
    if [r["index"] for r in got] != [r["index"] for r in exp]:
        return f"order {[r['index'] for r in got][:10]} != solo {[r['index'] for r in exp][:10]}"
    worst = max((abs(a["score"] - b["score"]) for a, b in zip(got, exp, strict=True)), default=0)
    if worst > tol:
        return f"score differs from solo by {worst:.3g}"
    if [r["document"] for r in got] != [r["document"] for r in exp]:
        return "returned documents differ from solo"
    for key in ("usage", "total_documents", "instruction", "query"):
        if body["output"][key] != want[key]:
            return f"{key} {body['output'][key]!r:.100} != solo {want[key]!r:.100}"
    return None


def same(body: dict, want: dict) -> bool:
    return mismatch(body, want) is None


def tiny_model(dest: Path) -> str:
    """The tiny random Qwen3 the CPU benchmarks serve (initializer_range spreads the scores)."""
    return str(save_random_model(dest, initializer_range=0.3))


def run_clients(server: LocalCogServer, requests: list[dict], clients: int) -> tuple[float, list]:
    def client(chunk):
        return [server.predict(r, timeout=600, retry_409_for=600) for r in chunk]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, [requests[i::clients] for i in range(clients)]))
    elapsed = time.perf_counter() - started
    answers = [None] * len(requests)
    for i in range(clients):
        for j, answer in enumerate(results[i]):
            answers[i + j * clients] = answer
    return elapsed, answers


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", help="model directory (default: a tiny random Qwen3)")
    p.add_argument("--clients", default="1,2,4,8,16")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=16, help="COG_MAX_CONCURRENCY")
    p.add_argument("--smoke", action="store_true", help="--clients 1,2 --requests 4")
    args = p.parse_args()
    if args.smoke:
        args.clients, args.requests = "1,2", 4
    levels = [int(x) for x in args.clients.split(",")]
    tmp = tempfile.TemporaryDirectory()
    model = args.model or tiny_model(Path(tmp.name) / "tiny")
    requests = make_requests(args.requests)
    solo = Reranker.load(model, device="cpu", settings=Settings())
    want = [solo.rank(r["query"], r["documents"]).to_dict() for r in requests]
    docs = sum(len(r["documents"]) for r in requests)
    print(f"# {len(requests)} requests, {docs} documents; COG_MAX_CONCURRENCY={args.concurrency}")
    print("| clients | seconds | requests/s | documents/s | vs 1 client | errors | equal to solo |")
    print("|---|---|---|---|---|---|---|")
    with LocalCogServer({"RERANKER_MODEL": model}, concurrency=args.concurrency) as server:
        run_clients(server, requests[:4], 2)  # warm-up
        base = None
        for k in levels:
            seconds, answers = run_clients(server, requests, k)
            errors = sum(
                1 for status, body in answers if status != 200 or body.get("status") != "succeeded"
            )
            equal = all(same(body, w) for (_, body), w in zip(answers, want, strict=True))
            base = base or seconds
            print(
                f"| {k} | {seconds:.2f} | {len(requests) / seconds:.1f} | {docs / seconds:.0f} | "
                f"{base / seconds:.2f}x | {errors} | {'yes' if equal else 'NO'} |",
                flush=True,
            )
        print(f"# server still {server.health()['status']}")


if __name__ == "__main__":
    main()
