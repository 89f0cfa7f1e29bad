"""``rerank``: rank documents from the command line; prints the predictor's JSON output."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from .config import DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH, DTYPE_NAMES, Settings
from .request import RerankRequest


def read_documents(text: str) -> list[str]:
    """A JSON array of strings, or else one document per non-empty line."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            docs = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ValueError(f"documents: not a valid JSON array ({exc})") from None
        if not isinstance(docs, list):
            raise ValueError("documents: the JSON must be an array of strings")
        return docs
    return [line for line in text.splitlines() if line.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rerank", description="Rank documents against a query with Qwen3-Reranker."
    )
    p.add_argument("--model", required=True, help="local model directory or hub id")
    p.add_argument("--query", required=True)
    p.add_argument(
        "--documents",
        required=True,
        metavar="FILE",
        help="a JSON array of strings, or one document per line; - reads stdin",
    )
    p.add_argument("--instruction", default=None, help="default: the model card's instruction")
    p.add_argument("--top-k", type=int, default=0, help="results to print; 0 prints all")
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if any)")
    p.add_argument("--dtype", default=None, choices=DTYPE_NAMES)
    p.add_argument("--no-documents", action="store_true", help="omit document text in results")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    try:
        if args.documents == "-":
            text = sys.stdin.read()
        else:
            with open(args.documents, encoding="utf-8") as f:
                text = f.read()
        documents = read_documents(text)
        settings = Settings.from_env()
        # Fail on bad arguments before spending seconds importing torch and loading weights.
        request = RerankRequest.build(
            settings.limits,
            query=args.query,
            documents=documents,
            instruction=args.instruction,
            top_k=args.top_k,
            max_length=args.max_length,
            batch_size=args.batch_size,
            return_documents=not args.no_documents,
        )
        from .api import Reranker
        from .config import HUB_MODEL_ID

        revision = settings.hub_revision if args.model == HUB_MODEL_ID else None
        reranker = Reranker.load(
            args.model, device=args.device, dtype=args.dtype, settings=settings, revision=revision
        )
        result = reranker.rerank(request)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"rerank: error: {exc}", file=sys.stderr)
        return 1
    json.dump(result.to_dict(), sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
