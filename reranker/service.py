"""The serving side: replicas behind the shared scheduler, progress logs and metrics.

Kept apart from ``predict.py`` so that the Cog adapter only maps inputs and outputs, and so
that everything here can be driven (and tested) without a Cog server. The service speaks in
``RERANKER_*`` names: errors from the layers below are given them here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from .api import Reranker
from .config import Limits, Settings, SettingsError, env_name
from .loading.placement import resolve_placement
from .loading.weights import resolve_weights
from .model.engine import BudgetTooLargeError
from .model.faults import DeviceFailedError, fatal_device_error
from .model.scorer import NonFiniteError
from .request.prepare import RerankRequest
from .request.results import RerankResult
from .runtime.admission import Admitted
from .runtime.progress import ProgressLog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Metrics:
    documents: int
    tokens: int
    truncated_documents: int
    forward_passes: int
    rescored_documents: int  # re-scored with float32 activations after a 16-bit overflow
    tokenize_seconds: float
    model_seconds: float
    admission_wait_seconds: float  # waiting for room under RERANKER_MAX_*_IN_FLIGHT

    def items(self) -> list[tuple[str, float]]:
        return list(vars(self).items())


class RerankService:
    """Replicas of the model behind one scheduler; ``rerank`` is one request."""

    device_failure: str | None = None  # the message of the first fatal GPU error, if any

    def __init__(self, reranker: Reranker) -> None:
        self.reranker = reranker

    @classmethod
    def start(cls, settings: Settings | None = None) -> RerankService:
        """Resolve the weights and load one replica per device (each load logs what it did)."""
        settings = Settings.from_env() if settings is None else settings
        try:  # a bad device fails before any download
            placement = resolve_placement(
                device=settings.device,
                dtype=settings.dtype,
                replicas=settings.replicas,
                attention=settings.attention,
                quantization=settings.quantization,
                label=env_name,
            )
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        weights = resolve_weights(settings)
        try:
            reranker = Reranker.from_placement(weights.path, placement, settings)
        except BudgetTooLargeError as exc:
            raise exc.naming(env_name) from None
        return cls(reranker)

    @property
    def limits(self) -> Limits:
        return self.reranker.limits

    @property
    def source(self) -> str:
        return self.reranker.source

    def close(self) -> None:
        self.reranker.close()

    async def rerank(
        self, request: RerankRequest, *, say: Callable[[str], None] = print
    ) -> tuple[RerankResult, Metrics]:
        """One request: admitted under the in-flight bounds (it may wait its turn there; its
        tokenization runs off the event loop), then scored alongside the others."""
        self._refuse_if_device_failed()
        async with self.reranker.admit(request) as admitted:
            return await self._scored(admitted, say)

    async def _scored(
        self, admitted: Admitted, say: Callable[[str], None]
    ) -> tuple[RerankResult, Metrics]:
        prepared = admitted.prepared
        request = prepared.request

        def cancelled(dropped: int, unique: int) -> None:
            say(f"cancelled: {dropped} of {unique} distinct documents left the queue unscored")

        try:
            logits, stats = await self.reranker.aprompt_logits(
                prepared, on_progress=ProgressLog(say, len(request.documents)), on_cancel=cancelled
            )
        except NonFiniteError as exc:
            raise NonFiniteError(f"{exc} (set {env_name('dtype')})") from None
        except Exception as exc:
            self._note_device_failure(exc)
            raise
        result = RerankResult.build(prepared, logits)
        metrics = Metrics(
            documents=len(request.documents),
            tokens=prepared.num_tokens,
            truncated_documents=prepared.num_truncated,
            forward_passes=stats.passes,
            rescored_documents=stats.rescored,
            tokenize_seconds=round(admitted.tokenize_seconds, 6),
            model_seconds=round(stats.model_seconds, 6),
            admission_wait_seconds=round(admitted.wait_seconds, 6),
        )
        return result, metrics

    def healthy(self) -> bool:
        """False once a GPU error has left the CUDA context unusable (``faults``): every later
        request would fail, so the instance must say so to be replaced."""
        return self.device_failure is None

    def _refuse_if_device_failed(self) -> None:
        """Fail fast instead of running a request on a dead CUDA context."""
        if self.device_failure is not None:
            raise DeviceFailedError(self.device_failure)

    def _note_device_failure(self, exc: Exception) -> None:
        """Remember the first fatal GPU error and raise it as one clear line; else return."""
        reason = fatal_device_error(exc)
        if reason is None:
            return
        if self.device_failure is None:
            self.device_failure = (
                f"the GPU failed ({reason}); this instance now reports itself unhealthy, "
                "retry the request"
            )
            log.error("GPU failure, reporting unhealthy from now on: %s", exc)
        raise DeviceFailedError(self.device_failure) from exc
