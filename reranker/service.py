"""The serving side: replicas, the cross-request scheduler, progress logs and metrics.

Kept apart from ``predict.py`` so that the Cog adapter only maps inputs and outputs, and so
that everything here can be driven (and tested) without a Cog server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import fp8
from .api import Reranker
from .config import DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH, Settings, SettingsError
from .scheduler import RequestStats, Scheduler
from .scoring import RerankResult
from .validation import check_bool
from .weights import resolve_weights

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 1.0  # at most one progress line per second per request


@dataclass(frozen=True)
class Metrics:
    documents: int
    tokens: int
    truncated_documents: int
    forward_passes: int
    rescored_documents: int  # re-scored with float32 activations after a 16-bit overflow
    tokenize_seconds: float
    model_seconds: float

    def items(self) -> list[tuple[str, float]]:
        return list(vars(self).items())


def replica_devices(settings: Settings) -> list[str]:
    """One replica per visible GPU unless ``RERANKER_DEVICE`` names one device."""
    count = settings.replicas
    if settings.device:
        if settings.device.startswith("cuda") and not torch.cuda.is_available():
            raise SettingsError(
                f"RERANKER_DEVICE={settings.device}, but this machine has no usable CUDA device"
            )
        devices = [settings.device] * (count or 1)
    elif torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        devices = [f"cuda:{i % gpus}" for i in range(count or gpus)]
    else:
        devices = ["cpu"] * (count or 1)
    if settings.attention == "varlen" and not devices[0].startswith("cuda"):
        raise SettingsError(
            f"RERANKER_ATTENTION=varlen needs a CUDA device (FlashAttention), but the model "
            f"would run on {devices[0]}; use auto or sdpa"
        )
    if settings.quantization == "fp8":
        for device in dict.fromkeys(devices):
            if reason := fp8.unsupported_reason(device):
                raise SettingsError(fp8.requirement(reason))
    return devices


class RerankService:
    """Replicas of the model behind one scheduler; ``rerank`` is one request."""

    def __init__(self, replicas: Sequence[Reranker], source: str = "") -> None:
        self.replicas = list(replicas)
        self.front = self.replicas[0]  # validates and tokenizes (same tokenizer everywhere)
        self.scheduler = Scheduler([r.engine for r in self.replicas])
        self.source = source

    @classmethod
    def start(cls, settings: Settings | None = None) -> RerankService:
        """Resolve the weights and load one replica per device (each load logs what it did)."""
        settings = Settings.from_env() if settings is None else settings
        devices = replica_devices(settings)  # a bad device fails before any download
        weights = resolve_weights(settings)
        replicas = [
            Reranker.load(weights.path, device=device, settings=settings) for device in devices
        ]
        return cls(replicas, source=weights.path)

    def close(self) -> None:
        self.scheduler.close()

    async def rerank(
        self,
        *,
        query: str,
        documents: Sequence[str],
        instruction: str | None = None,
        top_k: int | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        batch_size: int = DEFAULT_BATCH_SIZE,
        return_documents: bool = True,
        say: Callable[[str], None] = print,
    ) -> tuple[RerankResult, Metrics]:
        check_bool("return_documents", return_documents)
        started = time.perf_counter()
        # Tokenizing 10k documents takes a while: keep the event loop answering meanwhile.
        prepared = await asyncio.to_thread(
            self.front.prepare,
            query,
            documents,
            instruction=instruction,
            max_length=max_length,
            batch_size=batch_size,
            top_k=top_k,
        )
        tokenize_seconds = time.perf_counter() - started
        progress = _ProgressLog(say, len(prepared.documents), time.perf_counter())

        def cancelled(dropped: int, unique: int) -> None:
            say(f"cancelled: {dropped} of {unique} distinct documents left the queue unscored")

        logits, stats = await self.scheduler.logits(
            prepared.encoded,
            batch_size=prepared.batch_size,
            on_progress=progress,
            on_cancel=cancelled,
        )
        result = Reranker.result(prepared, prepared.expand(logits), top_k, return_documents)
        metrics = Metrics(
            documents=len(prepared.documents),
            tokens=prepared.num_tokens,
            truncated_documents=prepared.num_truncated,
            forward_passes=stats.passes,
            rescored_documents=stats.rescored,
            tokenize_seconds=round(tokenize_seconds, 6),
            model_seconds=round(stats.model_seconds, 6),
        )
        return result, metrics


@dataclass
class _ProgressLog:
    """Prints ``scored d/n documents`` lines for requests that take more than one pass."""

    say: Callable[[str], None]
    total: int
    started: float
    last: float = 0.0

    def __call__(self, done: int, unique: int, stats: RequestStats) -> None:
        """``done`` of ``unique`` distinct documents; shown over the request's own count."""
        now = time.perf_counter()
        if done < unique and now - self.last < PROGRESS_INTERVAL_S:
            return
        if done == unique and stats.passes <= 1:
            return
        self.last = now
        shown = self.total if done == unique else self.total * done // unique
        rate = stats.tokens / max(now - self.started, 1e-9)
        self.say(
            f"scored {shown}/{self.total} documents ({stats.passes} passes, {rate:,.0f} tokens/s)"
        )
