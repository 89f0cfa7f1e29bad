"""``rerank``: rank documents from the command line; prints the predictor's JSON output.

``rerank serve ...`` runs the HTTP server instead (:mod:`reranker.serve`)."""

from __future__ import annotations

import argparse
import codecs
import json
import logging
import sys
from collections.abc import Sequence
from typing import TextIO

from ..config import DTYPE_NAMES, Settings
from ..loading.weights import model_argument
from ..request.options import add_arguments, from_arguments
from ..request.prepare import RerankRequest
from .documents_file import FORMATS, load_documents


def write_json(value: object, stream: TextIO) -> None:
    """Write ``value`` as JSON that ``stream`` can always encode: non-ASCII characters as they
    are on a UTF-8 stream, as \\uXXXX escapes on any other (e.g. ``PYTHONIOENCODING=ascii``)."""
    text = json.dumps(value, ensure_ascii=False, indent=2) + "\n"
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        if codecs.lookup(encoding).name != "utf-8":
            raise UnicodeError(encoding)
        text.encode("utf-8")  # unpaired surrogates cannot be written as UTF-8
    except UnicodeError:
        text = json.dumps(value, ensure_ascii=True, indent=2) + "\n"
    stream.write(text)


def show_progress(quiet: bool, stream: TextIO) -> bool:
    """A progress bar only for a person watching: stderr is a terminal and --quiet is off."""
    return not quiet and stream.isatty()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rerank",
        description="Rank documents against a query with Qwen3-Reranker.",
        epilog="rerank serve --help: serve the rerank API (Cohere, Jina, vLLM, TEI) instead.",
    )
    p.add_argument(
        "--model", required=True, help="a local model directory, or a hub id of the form owner/name"
    )
    p.add_argument("--query", required=True)
    p.add_argument(
        "--documents",
        required=True,
        metavar="FILE",
        help="UTF-8 text, a JSON array of strings or one document per line (see "
        "--documents-format); - reads stdin; a byte-order mark is ignored",
    )
    p.add_argument(
        "--documents-format",
        choices=FORMATS,
        default="auto",
        help="lines: one document per line; lines end at LF or CRLF only (a form feed, U+2028 "
        "and the like stay inside a document); whitespace-only lines are skipped. json: a JSON "
        "array of strings. auto (default): json if the first non-whitespace character is '['; "
        "otherwise an error if the whole text is some other JSON value (an object, a string, a "
        "number, true, false, null); otherwise lines",
    )
    add_arguments(p)  # --instruction, --max-length, --top-k...: from RerankOptions
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if any)")
    p.add_argument("--dtype", default=None, choices=DTYPE_NAMES)
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar (one is drawn on stderr when stderr is a terminal)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:
        from ..serve.command import main as serve

        return serve(argv[1:])
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    try:
        args.model = model_argument(args.model)
        documents = load_documents(args.documents, args.documents_format, sys.stdin)
        settings = Settings.from_env()
        # Fail on bad arguments before spending seconds importing torch and loading weights.
        request = RerankRequest.build(
            settings.limits, query=args.query, documents=documents, **from_arguments(args)
        )
        from ..api import Reranker
        from ..config import HUB_MODEL_ID

        revision = settings.hub_revision if args.model == HUB_MODEL_ID else None
        reranker = Reranker.load(
            args.model, device=args.device, dtype=args.dtype, settings=settings, revision=revision
        )
        result = reranker.rerank(request, show_progress_bar=show_progress(args.quiet, sys.stderr))
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"rerank: error: {exc}", file=sys.stderr)
        return 1
    write_json(result.to_dict(), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
