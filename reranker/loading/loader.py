"""Checkpoint -> tokenizer and model replicas (engines), on the devices placement chose."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from ..config import Settings
from ..model.engine import Engine
from ..model.scorer import QwenScorer
from ..text.tokenization import PromptEncoder

log = logging.getLogger(__name__)
T = TypeVar("T")


class ModelLoadError(RuntimeError):
    """The checkpoint's files could not be read (one line, no traceback, in the setup log)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def load_encoder(source: str, revision: str | None = None) -> PromptEncoder:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the tokenizer from {source}: {_first_line(exc)}"
        ) from exc
    return PromptEncoder(tokenizer)


def in_passing_thread(fn: Callable[[], T]) -> T:
    """``fn()``, run on a thread that ends with it (its exception re-raised here).

    Torch's CPU ops run on an OpenMP team that libgomp keeps per calling thread; between
    parallel regions its threads spin, then sleep on a futex. Loading on the caller's thread
    (reading weights, fusion, the attention self-check) would leave that thread a team for
    good, beside the replica worker's team that runs every pass, and the two wake each other:
    on 2 CPU cores, rag-20 passes took 44.9 ms instead of 37.7 ms, with 175 voluntary context
    switches per request instead of 3 (``uv run python bench/latency.py``,
    bench/results/latency-cpu-2026-12-07.txt). A team made on a thread that ends goes with it.
    """
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="reranker-load", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def load_engine(
    source: str,
    device: torch.device,
    dtype: torch.dtype,
    encoder: PromptEncoder,
    settings: Settings,
    revision: str | None = None,
) -> Engine:
    """One replica: the weights on ``device``, the scorer over them, warmed up on CUDA."""
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, device_map=str(device), revision=revision
        )
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot load the model from {source}: {_first_line(exc)}") from exc
    return engine_from_model(hf_model, encoder, settings, source=source, started=started)


def engine_from_model(
    hf_model,
    encoder: PromptEncoder,
    settings: Settings,
    *,
    source: str = "",
    started: float | None = None,
    capability: tuple[int, int] | None = None,
) -> Engine:
    """The replica over an already-built Qwen3ForCausalLM (on its device, in its dtype):
    the scorer (fusion, FP8 quantization, numerics, attention backend), the engine and its
    warm-up at the budgets. ``capability`` is the GPU's compute capability (None: ask
    ``torch.cuda``); a parameter so that a model on fake CUDA tensors takes this same road."""
    started = time.perf_counter() if started is None else started
    loaded = time.perf_counter() - started  # reading the checkpoint onto the device
    device = hf_model.get_input_embeddings().weight.device
    scorer = QwenScorer(
        hf_model.eval(),
        yes_id=encoder.yes_id,
        no_id=encoder.no_id,
        attention=settings.attention,
        compile=settings.compile,
        quantization=settings.quantization,
        capability=capability,
    )
    if not hf_model.config.tie_word_embeddings:
        hf_model.lm_head = None  # 1.2 GB on the 8B model; the scorer copied the two rows it needs
    engine = engine_for(scorer, settings)
    if settings.warmup and device.type == "cuda":
        engine.warmup()
    scorer.setup_seconds = {"load": loaded, **scorer.setup_seconds}
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in scorer.setup_seconds.items())
    log.info(
        "loaded %s on %s in %s (attention: %s, %d tokens per pass, up to %d cached prefix "
        "tokens = %.2f GiB) in %.1fs (%s)",
        source,
        device,
        str(scorer.dtype).removeprefix("torch."),
        scorer.attention.name,
        engine.max_batch_tokens,
        engine.max_prefix_tokens,
        engine.max_prefix_tokens * scorer.kv_bytes_per_token / 2**30,
        time.perf_counter() - started,
        steps,
    )
    return engine


def engine_for(scorer: QwenScorer, settings: Settings) -> Engine:
    """The engine over a loaded scorer with the settings' budgets (no warm-up)."""
    return Engine(
        scorer,
        max_batch_tokens=settings.batch_tokens(scorer.device.type),
        prefix_reuse=settings.prefix_reuse,
        max_prefix_tokens=settings.max_prefix_tokens,
    )
