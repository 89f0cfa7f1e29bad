"""Tokenization cost of one long document: whole-text (before) vs safe prefixes (after).

    uv run python bench/tokenization.py                       # table on stdout
    uv run python bench/tokenization.py --out bench/results/tokenize-cpu-DATE.txt
    uv run python bench/tokenization.py --smoke               # seconds: one english row

Each case runs in a fresh process (Rust allocations are invisible to tracemalloc): it builds
the real Qwen3 tokenizer and the document, then reports the best of 5 ``encode`` calls (the
machine is shared) and the peak resident memory they add (VmHWM after resetting it through
/proc/self/clear_refs, minus VmRSS after malloc_trim). "before" is the same
``PromptEncoder.encode`` with the prefix path off (``bounded = False``), which is the old
code: the whole document, then cut to ``room``.
Kinds: ``english`` (words, digits, punctuation, newlines), ``cjk`` (ideographs with CJK
punctuation), ``run`` (one letter run: no safe cut exists, so both ways tokenize it whole).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import platform
import random
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = [
    "the",
    "of",
    "tea",
    "green",
    "river",
    "model",
    "rank",
    "token",
    "query",
    "answer",
    "Paris",
    "2024",
    "3.14",
    "naïve",
    "café",
]


def document(kind: str, size: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    if kind == "run":
        return "a" * size
    parts: list[str] = []
    length = 0
    while length < size:
        if kind == "cjk":
            piece = "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(rng.randint(4, 30)))
            piece += rng.choice("，。、；")
        else:
            piece = " ".join(rng.choices(WORDS, k=rng.randint(5, 20)))
            piece += rng.choice([". ", ", ", ".\n", "!\n\n", "; "])
        parts.append(piece)
        length += len(piece)
    return "".join(parts)[:size]


def memory_kib() -> dict[str, int]:
    status = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", status).group(1)) for k in ("VmRSS", "VmHWM")}


def one(kind: str, size: int, max_length: int, mode: str) -> dict:
    """Run in a fresh process: time and peak memory of ``encode`` on one document."""
    from devtools.offline import build_tokenizer
    from reranker.text.prompt import DEFAULT_INSTRUCTION
    from reranker.text.tokenization import PromptEncoder

    encoder = PromptEncoder(build_tokenizer())
    encoder.bounded = mode == "after"
    doc = document(kind, size)
    query = "which river runs through Paris?"
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand free heap back, so reuse does not hide growth
    before = memory_kib()["VmRSS"]
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    seconds, result = [], None
    for _ in range(5):
        start = time.perf_counter()
        result = encoder.encode(DEFAULT_INSTRUCTION, query, [doc], max_length)
        seconds.append(time.perf_counter() - start)
    return {
        "ms": 1000 * min(seconds),
        "peak_mib": (memory_kib()["VmHWM"] - before) / 1024,
        "tokens": len(result.documents[0]) - len(encoder.suffix_ids),
        "truncated": result.truncated[0],
        "ids": hashlib.sha256(json.dumps(result.documents[0]).encode()).hexdigest(),
    }


def run_case(kind: str, size: int, max_length: int, mode: str) -> dict:
    args = [sys.executable, __file__, "--one", kind, str(size), str(max_length), mode]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{cpu}, {os.cpu_count()} cores, no GPU used; Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--kinds", default="english,cjk,run")
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--max-lengths", default="256,8192")
    p.add_argument("--out", type=Path, help="also write the table here")
    p.add_argument("--smoke", action="store_true", help="--kinds english --sizes 10000 ...256")
    args = p.parse_args(argv)
    if args.smoke:
        args.kinds, args.sizes, args.max_lengths = "english", "10000", "256"
    if args.one:
        kind, size, max_length, mode = args.one
        print(json.dumps(one(kind, int(size), int(max_length), mode)))
        return 0
    lines = [
        "# command: uv run python bench/tokenization.py " + " ".join(argv or sys.argv[1:]),
        f"# machine: {machine()}",
        "# one document per request; best of 5 encode calls; peak = resident memory added",
        "| kind | chars | max_length | before ms | after ms | before peak MiB | "
        "after peak MiB | kept tokens | truncated | same ids |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for kind in args.kinds.split(","):
        for max_length in map(int, args.max_lengths.split(",")):
            for size in map(int, args.sizes.split(",")):
                old = run_case(kind, size, max_length, "before")
                new = run_case(kind, size, max_length, "after")
                row = (
                    f"| {kind} | {size:,} | {max_length} | {old['ms']:.1f} | {new['ms']:.1f} | "
                    f"{old['peak_mib']:.1f} | {new['peak_mib']:.1f} | {new['tokens']} | "
                    f"{new['truncated']} | {'yes' if old['ids'] == new['ids'] else 'NO'} |"
                )
                lines.append(row)
                print(row, flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
