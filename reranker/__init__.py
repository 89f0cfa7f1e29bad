"""Qwen3-Reranker scoring with the model card's exact recipe, fast.

The data path, one module each: ``request`` (the validated request) -> ``prompt`` (text ->
prompt) -> ``tokenization`` (token ids) -> ``scheduler`` + ``batching`` (documents of every
caller -> passes under a token budget) -> ``engine`` + ``packing`` (a pass on one replica) ->
``model`` + ``attention`` (hidden states -> logits) -> ``scoring`` (scores, ranked results).
Every caller takes that one road: ``api.Reranker`` (library, CLI) and ``service`` (the Cog
server) differ only in how they wait; ``admission`` bounds what is tokenized and queued at
once. ``config`` holds every setting, ``placement`` picks devices and dtype, ``loading`` and
``weights`` find and load the checkpoint; ``fp8``, ``layers``, ``faults`` and ``drift`` hold
the FP8 GEMMs, the fused layer weights, the GPU-fault rule and the dtype drift check.

Names are imported lazily so that ``rerank --help`` and argument errors do not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "DEFAULT_INSTRUCTION": "prompt",
    "RankedDocument": "scoring",
    "RerankResult": "scoring",
    "RerankRequest": "request",
    "Reranker": "api",
    "Settings": "config",
    "Usage": "scoring",
}

if TYPE_CHECKING:
    from .api import Reranker
    from .config import Settings
    from .prompt import DEFAULT_INSTRUCTION
    from .request import RerankRequest
    from .scoring import RankedDocument, RerankResult, Usage

__all__ = [
    "DEFAULT_INSTRUCTION",
    "RankedDocument",
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
