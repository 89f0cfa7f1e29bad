"""Qwen3-Reranker scoring with the model card's exact recipe, fast.

The data path, one module each: ``prompt`` (text -> prompt) -> ``tokenization`` (token ids)
-> ``batching`` / ``packing`` (passes) -> ``model`` + ``attention`` (hidden states -> logits)
-> ``scoring`` (scores, ranked results). ``api.Reranker`` ties them together; ``engine`` runs
passes within a token budget; ``scheduler`` and ``service`` serve concurrent requests;
``config`` holds every setting; ``weights`` finds the checkpoint.

Names are imported lazily so that ``rerank --help`` and argument errors do not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "DEFAULT_INSTRUCTION": "prompt",
    "RankedDocument": "scoring",
    "RerankResult": "scoring",
    "Reranker": "api",
    "Settings": "config",
    "Usage": "scoring",
}

if TYPE_CHECKING:
    from .api import Reranker
    from .config import Settings
    from .prompt import DEFAULT_INSTRUCTION
    from .scoring import RankedDocument, RerankResult, Usage

__all__ = [
    "DEFAULT_INSTRUCTION",
    "RankedDocument",
    "RerankResult",
    "Reranker",
    "Settings",
    "Usage",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
