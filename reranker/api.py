"""The public entry point: ``Reranker.load(...)``, ``.score(...)``, ``.rank(...)``.

Every call takes the same road as the Cog server: a :class:`~reranker.request.RerankRequest`
is built (validated once), admitted under the in-flight bounds every caller of this reranker
shares (:mod:`~reranker.runtime.admission`), prepared (tokenized, identical documents once), its
documents run through the :class:`~reranker.scheduler.Scheduler`, and the result is built by
:meth:`RerankResult.build <reranker.scoring.RerankResult.build>`. ``score`` returns P(yes) per
document in input order; ``rank`` is the sort-and-slice over the same logits.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import numpy as np
import torch

from .config import Limits, Settings
from .loading.loader import (
    ModelLoadError,
    engine_for,
    in_passing_thread,
    load_encoder,
    load_engine,
)
from .loading.placement import Placement, resolve_placement
from .model.engine import Engine
from .request.prepare import PreparedRequest, RerankRequest, prepare
from .request.results import RerankResult, sigmoid
from .runtime import loop
from .runtime.admission import Admission, Admitted
from .runtime.progress import ProgressBar
from .runtime.scheduler import OnCancel, OnProgress, RequestStats, Scheduler
from .text.tokenization import PromptEncoder
from .validation import check_bool, check_pairs

__all__ = ["ModelLoadError", "Reranker"]

T = TypeVar("T")


class Reranker:
    """Qwen3-Reranker scoring with the model card's exact prompt, ids and score."""

    def __init__(
        self,
        engines: Sequence[Engine],
        encoder: PromptEncoder,
        *,
        limits: Limits | None = None,
        admission: Admission | None = None,
        source: str = "",
    ) -> None:
        self.engines = list(engines)
        self.encoder = encoder
        self.limits = Limits() if limits is None else limits
        self.admission = Admission.from_settings(Settings()) if admission is None else admission
        self.source = source
        self.scheduler = Scheduler(self.engines)

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
        """Load a Qwen3-Reranker checkpoint (local directory or hub id) on one device.

        ``device`` defaults to cuda when available, else cpu; ``dtype`` to float16 on CUDA
        and float32 on CPU. ``settings`` defaults to ``Settings.from_env()``.
        """
        settings = Settings.from_env() if settings is None else settings
        placement = resolve_placement(
            device=device if device is not None else settings.device,
            dtype=dtype if dtype is not None else settings.dtype,
            replicas=1,
            attention=settings.attention,
            quantization=settings.quantization,
        )
        return cls.from_placement(os.fspath(model), placement, settings, revision=revision)

    @classmethod
    def from_placement(
        cls, source: str, placement: Placement, settings: Settings, revision: str | None = None
    ) -> Reranker:
        """One replica per device of ``placement``, sharing one tokenizer and one scheduler."""
        encoder = load_encoder(source, revision)
        engines = in_passing_thread(
            lambda: [
                load_engine(source, device, placement.dtype, encoder, settings, revision)
                for device in placement.devices
            ]
        )
        admission = Admission.from_settings(settings)
        return cls(engines, encoder, limits=settings.limits, admission=admission, source=source)

    def with_settings(self, settings: Settings) -> Reranker:
        """The same loaded model and tokenizer under other limits, budget or prefix reuse
        (the attention backend and dtype stay as loaded)."""
        engines = [engine_for(e.scorer, settings) for e in self.engines]
        return Reranker(
            engines,
            self.encoder,
            limits=settings.limits,
            admission=Admission.from_settings(settings),
            source=self.source,
        )

    def close(self) -> None:
        """Stop the scheduler's worker threads (queued requests fail with a clear error).
        Optional: workers also stop when the reranker is collected or the interpreter exits."""
        self.scheduler.close()

    @property
    def engine(self) -> Engine:
        return self.engines[0]

    @property
    def device(self) -> torch.device:
        return self.engine.scorer.device

    @property
    def dtype(self) -> torch.dtype:
        return self.engine.scorer.dtype

    # -- the road every caller takes --------------------------------------------------------

    def request(self, query: Any, documents: Any, **options: Any) -> RerankRequest:
        """A validated request under this reranker's limits (see ``RerankRequest.build``)."""
        return RerankRequest.build(self.limits, query=query, documents=documents, **options)

    def prepare(self, request: RerankRequest) -> PreparedRequest:
        """Tokenize the request and check its token budget."""
        return prepare(request, self.encoder, self.limits)

    @asynccontextmanager
    async def admit(self, request: RerankRequest) -> AsyncIterator[Admitted]:
        """``async with reranker.admit(request) as admitted:`` waits for room under the
        in-flight bounds (:mod:`reranker.runtime.admission`), tokenizes in a thread, and holds the
        request's tokens until the block exits; pass ``admitted.prepared`` to
        :meth:`aprompt_logits`."""
        async with self.admission.admit([request], self.prepare) as (admitted,):
            yield admitted

    async def aprompt_logits(
        self,
        prepared: PreparedRequest,
        on_progress: OnProgress | None = None,
        on_cancel: OnCancel | None = None,
    ) -> tuple[list[float], RequestStats]:
        """float32 ``logit_yes - logit_no`` per prompt of ``prepared`` (per distinct document,
        or per window of a chunked one), what ``RerankResult.build`` takes; its prompts share
        passes with other calls'."""
        return await self.scheduler.logits(
            prepared.encoded,
            batch_size=prepared.request.options.batch_size,
            on_progress=on_progress,
            on_cancel=on_cancel,
        )

    async def alogits(
        self, prepared: PreparedRequest, on_progress: OnProgress | None = None
    ) -> tuple[list[float], RequestStats]:
        """:meth:`aprompt_logits` per input document (input order; a chunked document's best
        window's)."""
        prompt, stats = await self.aprompt_logits(prepared, on_progress)
        return prepared.expand(prompt), stats

    async def arerank(
        self, request: RerankRequest, on_progress: OnProgress | None = None
    ) -> RerankResult:
        """Rank one request's documents (its ``top_k`` and ``return_documents`` apply)."""
        async with self.admit(request) as admitted:
            logits, _ = await self.aprompt_logits(admitted.prepared, on_progress)
            return RerankResult.build(admitted.prepared, logits)

    def rerank(self, request: RerankRequest, *, show_progress_bar: bool = False) -> RerankResult:
        """:meth:`arerank`, blocking (run on the loop thread, :mod:`reranker.runtime.loop`)."""
        check_bool("show_progress_bar", show_progress_bar)
        return _blocking(
            lambda post: self.arerank(request, post), len(request.documents), show_progress_bar
        )

    # -- public API ------------------------------------------------------------------------

    def score(
        self,
        query: str,
        documents: Sequence[str],
        *,
        show_progress_bar: bool = False,
        **options: Any,
    ) -> list[float]:
        """P(yes) for each document, in input order (the model card's score).

        ``options`` are :class:`~reranker.options.RerankOptions` fields but ``top_k`` and
        ``return_documents``: ``instruction``, ``max_length``, ``batch_size``, and
        ``long_documents="chunk"``, which scores a document longer than ``max_length`` as
        windows sharing ``chunk_overlap`` tokens (default: 256, at most 1/8 of the window)
        and gives it its best window's score; ``"truncate"`` (the default) cuts its end, as
        the model card does.
        """
        _refuse(options, "score", RANKING_ONLY)
        request = self.request(query, documents, **options)
        result = self.rerank(request, show_progress_bar=show_progress_bar)
        scores = [0.0] * len(request.documents)
        for r in result.results:
            scores[r.index] = r.score
        return scores

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        show_progress_bar: bool = False,
        **options: Any,
    ) -> RerankResult:
        """Documents sorted by score (ties by input index); ``top_k`` None or 0 keeps all.

        ``options`` are :class:`~reranker.options.RerankOptions` fields (``top_k``,
        ``return_documents``, and those of :meth:`score`); chunked results also carry each
        document's ``windows`` and the ``best_span`` of its best window.
        """
        request = self.request(query, documents, **options)
        return self.rerank(request, show_progress_bar=show_progress_bar)

    def predict(
        self,
        pairs: Sequence[Sequence[str]],
        *,
        show_progress_bar: bool = False,
        convert_to_numpy: bool = True,
        **options: Any,
    ) -> np.ndarray | list[float]:
        """P(yes) for each ``(query, document)`` pair, in input order.

        The shape of sentence-transformers' ``CrossEncoder.predict``, so evaluation loops
        (MTEB, BEIR scripts) and adapters (LangChain's ``BaseCrossEncoder.score``) work as
        they are. Pairs are grouped by query, one request per query, so each query's prompt
        prefix is still computed once; all groups run in one go and share passes.
        ``options`` as in :meth:`score`.
        """
        _refuse(options, "predict", RANKING_ONLY)
        check_bool("show_progress_bar", show_progress_bar)
        check_bool("convert_to_numpy", convert_to_numpy)
        checked = check_pairs(pairs)
        groups: dict[str, list[int]] = {}
        for i, (query, _) in enumerate(checked):
            groups.setdefault(query, []).append(i)
        requests: list[RerankRequest] = []
        for query, members in groups.items():
            with _naming_pairs(members):
                requests.append(self.request(query, [checked[i][1] for i in members], **options))
        members_of = {id(r): m for r, m in zip(requests, groups.values(), strict=True)}

        def prepare_group(request: RerankRequest) -> PreparedRequest:
            with _naming_pairs(members_of[id(request)]):
                return self.prepare(request)

        async def run(post: OnProgress | None) -> list[list[float]]:
            # all groups are admitted as one: they are in flight together
            async with self.admission.admit(requests, prepare_group) as admitted:
                prepared = [a.prepared for a in admitted]
                results = await self.scheduler.logits_many(
                    [p.encoded for p in prepared],
                    batch_size=requests[0].options.batch_size,
                    on_progress=post,
                )
            return [p.expand(unique) for p, (unique, _) in zip(prepared, results, strict=True)]

        scores = [0.0] * len(checked)
        logits = _blocking(run, len(checked), show_progress_bar)
        for members, group in zip(groups.values(), logits, strict=True):
            for i, logit in zip(members, group, strict=True):
                scores[i] = sigmoid(logit)
        return np.asarray(scores, dtype=np.float64) if convert_to_numpy else scores


# Options that shape ranked results, which ``score`` and ``predict`` do not return.
RANKING_ONLY = ("top_k", "return_documents")


def _refuse(options: dict[str, Any], method: str, names: Sequence[str]) -> None:
    for name in names:
        if name in options:
            raise TypeError(f"{method}() got an unexpected keyword argument {name!r}")


def _blocking(
    make: Callable[[OnProgress | None], Coroutine[Any, Any, T]], total: int, show_bar: bool
) -> T:
    """Run a coroutine of the async core on the loop thread, with a progress bar drawn in
    the caller's thread when asked."""
    bar = ProgressBar(total) if show_bar else None
    try:
        return loop.run(make, bar)
    finally:
        if bar is not None:
            bar.close()


@contextmanager
def _naming_pairs(members: Sequence[int]) -> Iterator[None]:
    """Name the pairs in an error about one query's group, not a request the caller never
    made."""
    try:
        yield
    except ValueError as exc:
        raise ValueError(f"pairs[{members[0]}] and the pairs sharing its query: {exc}") from None
