"""``python -m tools.drift``: the flags, and main (exit 0; 1 on an error or a failed mode)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from reranker.cli.documents_file import read_file
from reranker.config import Limits, Settings
from reranker.request.options import add_arguments, from_arguments, spec, specs
from reranker.validation import check_int

from .compare import compare
from .modes import DEFAULT_MODES, MODES, REFERENCE, parse_modes
from .report import format_table, json_report, write_json
from .requests import read_requests

# The request options this command takes as flags, generated from RerankOptions (the flag, its
# help, its bounds and its default are the options type's). The others are no flags here: the
# instruction comes from each line of the requests file; top_k and return_documents do not
# apply (every document is scored and compared, and --top-k below is the k of the overlap);
# batch_size, long_documents and chunk_overlap were never flags of this command.
OPTION_FLAGS = ("max_length",)
NOT_FLAGS = tuple(name for name, _, _ in specs() if name not in OPTION_FLAGS)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.drift",
        description="Compare scores in float16, bfloat16, ... against float32 on your own "
        "queries and documents: one table row per mode.",
    )
    p.add_argument(
        "--model", required=True, help="a local model directory, or a hub id of the form owner/name"
    )
    p.add_argument(
        "--requests",
        required=True,
        metavar="FILE",
        help='JSON Lines, one {"query": ..., "documents": [...], "instruction": ...} per line '
        "(instruction optional); - reads stdin",
    )
    p.add_argument(
        "--modes",
        default=",".join(DEFAULT_MODES),
        help=f"comma-separated, of {', '.join(MODES)}; float32 here re-runs the reference "
        f"(default: {','.join(DEFAULT_MODES)})",
    )
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if any)")
    p.add_argument(
        "--reference-device",
        default=None,
        help="where the float32 reference runs (default: --device)",
    )
    add_arguments(p, exclude=NOT_FLAGS)  # --max-length: from RerankOptions
    p.add_argument("--top-k", type=int, default=10, help="k of the top-k overlap (default 10)")
    p.add_argument("--json", metavar="OUT", default=None, help="also write the rows as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def check_option_flags(args: argparse.Namespace, limits: Limits) -> None:
    """Each request-option flag given, checked by its option under the flag's name
    (``--max-length must be between ...``) before the requests file is read."""
    for name in OPTION_FLAGS:
        value = getattr(args, name)
        if value is not None:
            spec(name).check("--" + name.replace("_", "-"), value, limits)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        from reranker.loading.weights import model_argument

        model = model_argument(args.model)
        modes = parse_modes(args.modes)
        check_int("--top-k", args.top_k, low=1)
        check_option_flags(args, Limits())  # an int's bounds do not depend on the limits
        settings = Settings.from_env()
        # Fail on a bad file before spending minutes loading weights.
        text = read_file(args.requests, sys.stdin, option="--requests")
        options = from_arguments(args, exclude=NOT_FLAGS)
        requests, labels = read_requests(text, args.requests, settings.limits, **options)
        import torch

        from reranker.config import HUB_MODEL_ID

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        progress = None if args.quiet else lambda line: print(f"drift: {line}", file=sys.stderr)
        rows = compare(
            model,
            requests,
            modes,
            device,
            k=args.top_k,
            settings=settings,
            revision=settings.hub_revision if model == HUB_MODEL_ID else None,
            reference_device=args.reference_device,
            labels=labels,
            progress=progress,
        )
        print(format_table(rows), flush=True)
        if args.json:
            reference_device = args.reference_device or device
            report = json_report(model, device, REFERENCE, reference_device, args.top_k, rows)
            try:
                write_json(args.json, report)
            except OSError as exc:
                raise ValueError(f"--json {args.json}: {exc.strerror or exc}") from None
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"drift: error: {exc}", file=sys.stderr)
        return 1
    return 1 if any(r.status == "failed" for r in rows) else 0
