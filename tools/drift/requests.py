"""The requests file: JSON Lines, one request per line, every error naming the file and line."""

from __future__ import annotations

import json
from typing import Any

from reranker.cli.documents_file import BOM, json_kind
from reranker.config import Limits
from reranker.request.prepare import RerankRequest

FIELDS = ("query", "documents", "instruction")
SHAPE = 'expected one JSON object per line: {"query": ..., "documents": [...]}'


def read_requests(
    text: str, path: str, limits: Limits, **options: Any
) -> tuple[list[RerankRequest], list[str]]:
    """The requests of a JSON Lines file, and each one's label (``--requests PATH, line N``).

    Lines end at ``\\n`` (``\\r\\n`` too); blank lines are skipped; a UTF-8 byte-order mark is
    ignored. Each line is an object with ``query``, ``documents`` and optionally
    ``instruction``; every error names the file and the line. ``options`` are other
    :class:`RerankOptions` fields every request takes (``max_length=...``, as the command's
    flags give them); documents are never returned.
    """
    where = "--requests - (stdin)" if path == "-" else f"--requests {path}"
    requests, labels = [], []
    for number, line in enumerate(text.removeprefix(BOM).split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        label = f"{where}, line {number}"
        try:
            value = json.loads(line)
        except (ValueError, RecursionError) as exc:
            hint = "; the file is JSON Lines, not a JSON array" if line.lstrip()[:1] == "[" else ""
            raise ValueError(f"{label}: not valid JSON ({exc}); {SHAPE}{hint}") from None
        if not isinstance(value, dict):
            hint = "; the file is JSON Lines, not a JSON array" if isinstance(value, list) else ""
            raise ValueError(f"{label}: {SHAPE}, got {json_kind(value)}{hint}")
        extra = [f for f in value if f not in FIELDS]
        if extra:
            raise ValueError(
                f"{label}: unknown field {extra[0]!r} (a line holds query, documents and, "
                "optionally, instruction)"
            )
        for name in ("query", "documents"):
            if name not in value:
                raise ValueError(f"{label}: missing field {name!r}")
        try:
            request = RerankRequest.build(
                limits,
                query=value["query"],
                documents=value["documents"],
                instruction=value.get("instruction"),
                **{**options, "return_documents": False},
            )
        except ValueError as exc:
            raise ValueError(f"{label}: {exc}") from None
        requests.append(request)
        labels.append(label)
    if not requests:
        raise ValueError(f"{where}: no requests in the file; {SHAPE}")
    return requests, labels
