"""The public entry point: ``Reranker.load(...)``, ``.score(...)`` and ``.rank(...)``.

``score`` is the one scoring function (P(yes) per document, input order); ``rank`` is a thin
sort-and-slice over the same logits. Both run the same three steps: prepare (validate,
de-duplicate, tokenize), run the model (:class:`~reranker.engine.Engine`), post-process
(:mod:`reranker.scoring`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .config import DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH, DTYPE_NAMES, Settings
from .engine import Engine, Progress
from .model import QwenScorer
from .prompt import resolve_instruction
from .scoring import RerankResult, Usage, ranked_documents, sigmoid
from .tokenization import EncodedRequest, PromptEncoder
from .validation import check_bool, check_request, check_token_budget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedRequest:
    """A validated, tokenized request. Identical documents are scored once."""

    query: str
    instruction: str
    documents: list[str]
    inverse: list[int]  # documents[i] is unique document inverse[i]
    encoded: EncodedRequest  # of the unique documents
    batch_size: int

    @property
    def num_tokens(self) -> int:
        ctx = len(self.encoded.context)
        return sum(ctx + len(self.encoded.documents[j]) for j in self.inverse)

    @property
    def num_truncated(self) -> int:
        return sum(self.encoded.truncated[j] for j in self.inverse)

    def usage(self) -> Usage:
        return Usage(total_tokens=self.num_tokens, truncated_documents=self.num_truncated)

    def expand(self, unique_values: Sequence[float]) -> list[float]:
        return [unique_values[j] for j in self.inverse]


class ModelLoadError(RuntimeError):
    """The checkpoint's files could not be read (one line, no traceback, in the setup log)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be cpu, cuda or cuda:N, not {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or cuda:N, not {device!r}")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "":
        return torch.float16 if device.type == "cuda" else torch.float32
    name = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else dtype
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, not {dtype!r}")
    return getattr(torch, name)


class Reranker:
    """Qwen3-Reranker scoring with the model card's exact prompt, ids and score."""

    def __init__(
        self, engine: Engine, encoder: PromptEncoder, *, settings: Settings, source: str = ""
    ) -> None:
        self.engine = engine
        self.encoder = encoder
        self.settings = settings
        self.source = source

    @classmethod
    def load(
        cls,
        model: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        settings: Settings | None = None,
        revision: str | None = None,
    ) -> Reranker:
        """Load a Qwen3-Reranker checkpoint (local directory or hub id).

        ``device`` defaults to cuda when available, else cpu; ``dtype`` to float16 on CUDA
        and float32 on CPU. ``settings`` defaults to ``Settings.from_env()``.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        settings = Settings.from_env() if settings is None else settings
        dev = resolve_device(device if device is not None else settings.device)
        dt = resolve_dtype(dtype if dtype is not None else settings.dtype, dev)
        started = time.perf_counter()
        source = os.fspath(model)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load the tokenizer from {source}: {_first_line(exc)}"
            ) from exc
        encoder = PromptEncoder(tokenizer)
        try:
            hf_model = AutoModelForCausalLM.from_pretrained(
                source, dtype=dt, device_map=str(dev), revision=revision
            )
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load the model from {source}: {_first_line(exc)}"
            ) from exc
        scorer = QwenScorer(
            hf_model,
            yes_id=encoder.yes_id,
            no_id=encoder.no_id,
            attention=settings.attention,
            compile=settings.compile,
            quantization=settings.quantization,
        )
        engine = Engine(scorer, settings)
        if settings.warmup and dev.type == "cuda":
            engine.warmup()
        log.info(
            "loaded %s on %s in %s (attention: %s, %d tokens per pass) in %.1fs",
            source,
            dev,
            str(dt).removeprefix("torch."),
            scorer.attention.name,
            engine.max_batch_tokens,
            time.perf_counter() - started,
        )
        return cls(engine, encoder, settings=settings, source=source)

    def with_settings(self, settings: Settings) -> Reranker:
        """The same loaded model and tokenizer under other limits, budget or prefix reuse
        (the attention backend and dtype stay as loaded)."""
        return Reranker(
            Engine(self.engine.scorer, settings),
            self.encoder,
            settings=settings,
            source=self.source,
        )

    @property
    def device(self) -> torch.device:
        return self.engine.scorer.device

    @property
    def dtype(self) -> torch.dtype:
        return self.engine.scorer.dtype

    # -- pre-process ---------------------------------------------------------------------

    def prepare(
        self,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        batch_size: int = DEFAULT_BATCH_SIZE,
        top_k: int | None = None,
    ) -> PreparedRequest:
        """Validate and tokenize; raises ``ValueError`` naming the offending argument."""
        query, docs, instruction = check_request(
            self.settings,
            query=query,
            documents=documents,
            instruction=instruction,
            max_length=max_length,
            batch_size=batch_size,
            top_k=top_k,
        )
        position: dict[str, int] = {}
        inverse = [position.setdefault(d, len(position)) for d in docs]
        resolved = resolve_instruction(instruction)
        encoded = self.encoder.encode(resolved, query, list(position), max_length)
        prepared = PreparedRequest(query, resolved, docs, inverse, encoded, batch_size)
        check_token_budget(prepared.num_tokens, self.settings)
        return prepared

    # -- model ---------------------------------------------------------------------------

    def logits(self, prepared: PreparedRequest, progress: Progress | None = None) -> list[float]:
        """float32 ``logit_yes - logit_no`` per document, input order."""
        unique = self.engine.score_request(
            prepared.encoded, batch_size=prepared.batch_size, progress=progress
        )
        self.engine.scorer.check_finite(unique)
        return prepared.expand(unique)

    # -- public API ----------------------------------------------------------------------

    def score(
        self,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> list[float]:
        """P(yes) for each document, in input order (the model card's score)."""
        prepared = self.prepare(
            query, documents, instruction=instruction, max_length=max_length, batch_size=batch_size
        )
        return [sigmoid(x) for x in self.logits(prepared)]

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        top_k: int | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        batch_size: int = DEFAULT_BATCH_SIZE,
        return_documents: bool = True,
    ) -> RerankResult:
        """Documents sorted by score (ties by input index); ``top_k`` None or 0 keeps all."""
        check_bool("return_documents", return_documents)
        prepared = self.prepare(
            query,
            documents,
            instruction=instruction,
            max_length=max_length,
            batch_size=batch_size,
            top_k=top_k,
        )
        return self.result(prepared, self.logits(prepared), top_k, return_documents)

    # -- post-process --------------------------------------------------------------------

    @staticmethod
    def result(
        prepared: PreparedRequest,
        logits: Sequence[float],
        top_k: int | None,
        return_documents: bool,
    ) -> RerankResult:
        return RerankResult(
            instruction=prepared.instruction,
            query=prepared.query,
            results=ranked_documents(
                prepared.documents, logits, top_k=top_k, return_documents=return_documents
            ),
            total_documents=len(prepared.documents),
            usage=prepared.usage(),
        )
