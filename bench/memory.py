"""Peak host memory of the real Cog server under 16 concurrent worst-case requests.

    uv run python bench/memory.py                                  # this checkout, 1/20 scale
    uv run python bench/memory.py --project /tmp/base --label before  # another checkout's code
    uv run python bench/memory.py --off                            # admission bounds at 10^12
    uv run python bench/memory.py --smoke                          # seconds: 1/200 scale, 2 clients

The server (devtools/localserver.py, tiny random model from devtools/offline.py) runs with
every RERANKER_* request limit divided by ``--scale`` (and the in-flight bounds too, unless
``--off``). 16 clients send at once, alternating two kinds of request at those limits:

* ``accepted``: max documents x (max total chars / max documents) of word text, ``max_length``
  set so the request holds exactly its token limit, ``top_k=0`` and documents returned (the
  response carries every character back);
* ``rejected``: the same sizes in digits (one token per character) and the default
  ``max_length``: far over the token limit, refused after tokenizing.

Every 20 ms the resident memory (VmRSS) of the server's whole process tree (the coglet
parent and its worker children, found through /proc) is summed; reported: the peak minus the
idle level after a warm-up request, with each request's outcome.

    uv run python bench/memory.py --per-char

measures instead, in fresh processes, what ``prepare()`` (tokenization) costs per character
and per token for three kinds of text, whole (one tokenizer call, the code before admission)
and in chunks: peak added RSS (VmHWM after resetting it) and what stays held (the token ids).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools import localserver, procstat  # noqa: E402
from devtools.localserver import LocalCogServer  # noqa: E402
from devtools.offline import save_random_model  # noqa: E402

# The documented limits (docs/configuration.md), divided by --scale.
LIMITS = {
    "MAX_DOCUMENTS": 10_000,
    "MAX_DOCUMENT_CHARS": 1_000_000,
    "MAX_TOTAL_CHARS": 50_000_000,
    "MAX_REQUEST_TOKENS": 4_000_000,
}
BOUNDS = {"MAX_CHARS_IN_FLIGHT": 16_000_000, "MAX_TOKENS_IN_FLIGHT": 16_000_000}
WORDS = ["the", "of", "tea", "green", "river", "model", "rank", "token", "query", "answer"]


def rss_tree_kib(root: int) -> dict[int, int]:
    """VmRSS (KiB) of ``root`` and every descendant, from /proc."""
    return {pid: s["rss_kib"] for pid, s in procstat.sample(root, fds=False).items()}


class Sampler(threading.Thread):
    def __init__(self, root: int, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.root, self.every = root, every
        self.peak_total = 0
        self.peak_by_pid: dict[int, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            tree = rss_tree_kib(self.root)
            self.peak_total = max(self.peak_total, sum(tree.values()))
            for pid, kib in tree.items():
                self.peak_by_pid[pid] = max(self.peak_by_pid.get(pid, 0), kib)
            time.sleep(self.every)


def make_request(kind: str, scale: int, seed: int) -> dict:
    docs_n = LIMITS["MAX_DOCUMENTS"] // scale
    chars = LIMITS["MAX_TOTAL_CHARS"] // scale // docs_n
    tokens = LIMITS["MAX_REQUEST_TOKENS"] // scale
    rng = random.Random(seed)
    docs = []
    for i in range(docs_n):
        body = text("digits" if kind == "rejected" else "words", chars, rng)
        docs.append(f"{i} {body}"[:chars])
    request = {"query": f"{kind} {seed}", "documents": docs, "top_k": 0}
    if kind == "accepted":
        request["max_length"] = tokens // docs_n  # every document cut to exactly this
    return request


def text(kind: str, chars: int, rng: random.Random) -> str:
    if kind == "digits":  # one token per character
        return "".join(rng.choices("0123456789", k=chars))
    if kind == "emoji-cjk":  # 4-byte characters in Python, about one token each
        return "".join(rng.choices(["\U0001f600", "\U0001f680", "\u4e2d", "\u6587"], k=chars))
    return " ".join(rng.choices(WORDS, k=chars // 4))[:chars]


def status_kib(field: str) -> int:
    line = next(
        x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field)
    )
    return int(line.split()[1])


def one_case(kind: str, mode: str) -> None:
    """In a fresh process: prepare() one request of 1,000 documents; print one table row."""
    import ctypes

    from devtools.offline import build_tokenizer
    from reranker.config import Limits
    from reranker.request import prepare as request_module
    from reranker.request.prepare import RerankRequest, prepare
    from reranker.text.tokenization import PromptEncoder

    encoder = PromptEncoder(build_tokenizer())
    if mode == "whole":
        request_module.TOKENIZE_CHUNK_CHARS = 10**12
    chars = 2000 if kind == "emoji-cjk" else 5000
    rng = random.Random(0)
    limits = Limits(max_total_chars=10**9, max_request_tokens=10**9)
    req = RerankRequest.build(
        limits, query="q", documents=[text(kind, chars, rng) for _ in range(1000)]
    )
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    base = status_kib("VmRSS:")
    prepared = prepare(req, encoder, limits)
    peak = status_kib("VmHWM:") - base
    libc.malloc_trim(0)
    held = status_kib("VmRSS:") - base
    total = sum(map(len, req.documents))
    tokens = sum(map(len, prepared.encoded.documents))
    print(
        f"| {kind} | {mode} | {total:,} | {tokens:,} | {peak / 1024:.0f} | "
        f"{peak * 1024 / total:.0f} | {held / 1024:.0f} | {held * 1024 / tokens:.0f} |",
        flush=True,
    )


def per_character(kinds=("words", "digits", "emoji-cjk"), modes=("whole", "chunks")) -> None:
    print("# prepare() of 1,000 documents, fresh process per row; peak = VmHWM over the call")
    print("| text | tokenized | characters | tokens | peak MiB | peak B/char ", end="")
    print("| held MiB | held B/token |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in kinds:
        for mode in modes:
            subprocess.run([sys.executable, __file__, "--case", kind, mode], check=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--project", default=str(ROOT), help="checkout whose predict.py is served")
    p.add_argument("--label", default="this checkout")
    p.add_argument("--scale", type=int, default=20, help="divide every limit by this")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--off", action="store_true", help="admission bounds at 10^12 (off)")
    p.add_argument("--per-char", action="store_true", help="tokenization cost per character")
    p.add_argument("--case", nargs=2, help=argparse.SUPPRESS)
    p.add_argument(
        "--smoke", action="store_true", help="--scale 200 --clients 2, one --per-char row"
    )
    args = p.parse_args()
    if args.case:
        return one_case(*args.case)
    if args.per_char:
        return per_character()
    if args.smoke:
        args.scale, args.clients = 200, 2
        per_character(kinds=("words",), modes=("chunks",))
    env = {f"RERANKER_{k}": str(v // args.scale) for k, v in LIMITS.items()}
    for k, v in BOUNDS.items():
        env[f"RERANKER_{k}"] = str(10**12 if args.off else v // args.scale)
    tmp = tempfile.TemporaryDirectory()
    env["RERANKER_MODEL"] = str(save_random_model(Path(tmp.name) / "tiny", initializer_range=0.3))
    env["PYTHONPATH"] = args.project  # the served checkout's reranker package, not ours
    localserver.PROJECT_ROOT = Path(args.project)
    kinds = ["accepted" if i % 2 == 0 else "rejected" for i in range(args.clients)]
    requests = [make_request(k, args.scale, i) for i, k in enumerate(kinds)]
    commit = subprocess.run(
        ["git", "-C", args.project, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"# {args.label} ({args.project}, commit {commit or 'n/a (exported tree)'})")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, ", end="")
    mem = [ln for ln in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in ln]
    print(f"{mem[0].split()[1]} kB RAM; {time.strftime('%Y-%m-%d')}")
    print("# env: " + " ".join(f"{k}={v}" for k, v in sorted(env.items()) if "MODEL" not in k))
    print(f"# {args.clients} concurrent requests: {kinds.count('accepted')} accepted, ", end="")
    print(f"{kinds.count('rejected')} rejected (see the docstring)")
    with LocalCogServer(env, concurrency=args.clients) as server:
        status, body = server.predict({"query": "warm", "documents": ["up"]}, timeout=120)
        assert body.get("status") == "succeeded", body
        time.sleep(1.0)
        idle = sum(rss_tree_kib(server.process.pid).values())
        sampler = Sampler(server.process.pid)
        sampler.start()
        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            answers = list(
                pool.map(lambda r: server.predict(r, timeout=900, retry_409_for=60), requests)
            )
        elapsed = time.perf_counter() - started
        sampler.stop.set()
        sampler.join()
        health = server.health().get("status")
    print(f"# idle tree RSS {idle / 1024:.0f} MiB; {elapsed:.1f} s for all requests")
    print("| request | kind | status | detail |")
    print("|---|---|---|---|")
    for i, (kind, (status, body)) in enumerate(zip(kinds, answers, strict=True)):
        if body.get("status") == "succeeded":
            out = body["output"]
            m = body.get("metrics", {})
            wait = m.get("admission_wait_seconds")
            detail = f"{out['usage']['total_tokens']:,} tokens, {len(out['results'])} results"
            detail += "" if wait is None else f", waited {wait:.1f} s for admission"
        else:
            detail = str(body.get("error", body))[:110]
        print(f"| {i} | {kind} | {status} {body.get('status')} | {detail} |")
    print(f"# server afterwards: {health}")
    peaks = sorted(sampler.peak_by_pid.values(), reverse=True)
    print("# peak RSS per process (MiB): " + ", ".join(f"{k / 1024:.0f}" for k in peaks))
    print(
        f"PEAK tree RSS {sampler.peak_total / 1024:.0f} MiB "
        f"(+{(sampler.peak_total - idle) / 1024:.0f} MiB over idle) [{args.label}]"
    )


if __name__ == "__main__":
    main()
