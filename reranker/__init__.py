"""Qwen3-Reranker scoring with the model card's exact recipe, fast.

The folders follow the data path, each importing only the ones above it in this list (and on
one line, the names left of it; tests/test_layout.py holds the rule):

    config, validation   settings (RERANKER_*) and field checks, shared by all
    text/                text -> prompt -> token ids -> windows
    request/ | model/    options -> validated, tokenized request; logits -> ranked results |
                         passes -> hidden states -> logits on one replica (neither imports
                         the other)
    runtime/ | loading/  admission -> the queue -> passes on the replicas' workers |
                         devices, weights, replicas
    api, service         the library (Reranker) and the serving side (RerankService)
    serve/, cli/         front ends: the HTTP rerank API, the rerank command (whose
                         `rerank serve` starts the former)

Commands built on the package (tools/, e.g. the drift check `python -m tools.drift`) live
outside it: nothing here imports them.

Names are imported lazily so that ``rerank --help`` and argument errors do not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "DEFAULT_INSTRUCTION": "text.prompt",
    "RankedDocument": "request.results",
    "RerankOptions": "request.options",
    "RerankResult": "request.results",
    "RerankRequest": "request.prepare",
    "Reranker": "api",
    "Settings": "config",
    "Usage": "request.results",
}

if TYPE_CHECKING:
    from .api import Reranker
    from .config import Settings
    from .request.options import RerankOptions
    from .request.prepare import RerankRequest
    from .request.results import RankedDocument, RerankResult, Usage
    from .text.prompt import DEFAULT_INSTRUCTION

__all__ = [
    "DEFAULT_INSTRUCTION",
    "RankedDocument",
    "RerankOptions",
    "RerankRequest",
    "RerankResult",
    "Reranker",
    "Settings",
    "Usage",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
