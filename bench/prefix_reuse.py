"""Prefix reuse on CPU: ``auto`` (decided per document) against ``on`` and ``off``.

    uv run python bench/prefix_reuse.py
    uv run python bench/prefix_reuse.py --smoke   # seconds: the tiny model, 40 + 1 documents

The request that a request-wide rule got wrong: many short documents and one long one. With
reuse for every document, the long one's continued attention goes through a materialized mask
(slow, gigabytes); with reuse for none, every short document recomputes the prefix. ``auto``
should be no slower than either.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import workloads  # noqa: E402
from run import cpu_scale_setup, ours  # noqa: E402

from reranker import Settings  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--smoke", action="store_true", help="the tiny model, 40 + 1 documents")
    smoke = p.parse_args().smoke
    tokenizer, encoder, model = cpu_scale_setup(smoke)
    n, long_tokens = (40, 1024) if smoke else (400, 8192)
    short = workloads.short(tokenizer, n=n)
    (long_doc,) = workloads.long(tokenizer, long_tokens).documents
    docs = [*short.documents[: n // 2], long_doc, *short.documents[n // 2 :]]
    print(f"# {n} documents of ~30 tokens and one of ~{long_tokens} tokens, max_length 8192")
    for mode in ("off", "on", "auto", "off", "on", "auto"):
        r = ours(model, encoder, Settings(prefix_reuse=mode))
        started = time.perf_counter()
        r.score(short.query, docs, instruction=short.instruction, max_length=8192)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"prefix_reuse={mode:<4}: {seconds:6.2f}s (process peak RSS so far {peak:.2f} GiB)")


if __name__ == "__main__":
    main()
