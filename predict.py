"""Cog adapter: inputs and outputs only. The work happens in the ``reranker`` package.

Cog's schema generator reads this file statically (tree-sitter) at ``cog build``, so: the
``@concurrent`` max and ``Input()``'s ge/le are integer literals (a name is an error or is
silently dropped), ``default``/``description`` are literals or constants of this module, every
string is one plain literal (Cog copies the raw text between the quotes), and the output models
are defined here. ``tests/test_static_checks.py`` checks these against Cog's parser rules.
"""

import logging
import signal
import sys

import coglet
from cog import BasePredictor, Input, concurrent, current_scope
from pydantic import BaseModel, model_serializer

from reranker.config import Settings
from reranker.request.prepare import RerankRequest
from reranker.request.results import CHUNK_ONLY_FIELDS
from reranker.service import RerankService

DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
DEFAULT_TOP_K = 5
DEFAULT_BATCH_SIZE = 256
DEFAULT_MAX_LENGTH = 8192
MAX_LENGTH_LIMIT = 32768
DEFAULT_LONG_DOCUMENTS = "truncate"
LONG_DOCUMENTS_HELP = "A document longer than max_length: truncate cuts its end (the model card's way); chunk scores it whole, as overlapping windows, and keeps its best window (results then carry windows and best_span)."  # noqa: E501
CHUNK_OVERLAP_HELP = "Only with long_documents=chunk: the tokens that consecutive windows share. Omit it for the default, 256 (at most 1/8 of the window)."  # noqa: E501
# Requests served at once by one instance. Their documents share forward passes, so this
# is what lets small concurrent requests fill the GPU; beyond it the server answers 409.
# `cog build` reads only the literal in @concurrent(max=...) below and bakes it into the image
# as COG_MAX_CONCURRENCY; the tests keep the two equal.
MAX_CONCURRENCY = 16


class ChunkFieldsOmitted(BaseModel):
    """Leaves the long_documents="chunk" fields out of the JSON when unset, so that a
    truncating request's output is exactly what it was before chunking existed (pydantic
    would write them as null). The models below also name BaseModel as a base: Cog's schema
    generator sees a model only there (models.go, InheritsFromBaseModel)."""

    @model_serializer(mode="wrap")
    def _omit_unset_chunk_fields(self, handler):
        out = handler(self)
        for name in CHUNK_ONLY_FIELDS:
            if out.get(name, 0) is None:
                del out[name]
        return out


class RankedDocument(ChunkFieldsOmitted, BaseModel):
    index: int
    document: str | None
    score: float
    logit: float
    tokens: int
    truncated: bool
    windows: int | None = None
    best_span: list[int] | None = None


class Usage(ChunkFieldsOmitted, BaseModel):
    total_tokens: int
    truncated_documents: int
    windows: int | None = None


class Output(BaseModel):
    instruction: str
    query: str
    results: list[RankedDocument]
    total_documents: int
    usage: Usage


class Predictor(BasePredictor):
    def setup(self) -> None:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
        self.service = RerankService.start(Settings.from_env())
        # SIGTERM drains: the server (coglet) stops accepting connections, answers the requests
        # already running, then tells this worker to exit (crates/coglet/src/transport/http/
        # server.rs, serve). A SIGTERM sent to the whole process group (kill -- -PGID) would
        # otherwise kill this worker mid-request ("Worker crashed"); ignoring it here makes both
        # paths drain, as coglet's own --await-explicit-shutdown does (its SIG_IGN is
        # inherited). Set after loading so that a SIGTERM during setup still stops the load, and
        # only in Cog's worker process (coglet.server.active), never in a test runner.
        if coglet.server.active:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def healthcheck(self) -> bool:
        """False after a GPU error that left CUDA unusable: /health-check reports UNHEALTHY.

        coglet runs it on each GET /health-check once setup is done, also while predictions run
        (crates/coglet/src/transport/http/routes.rs, ``health_check``), in a thread with a 5 s
        timeout (crates/coglet-python/src/predictor.rs, ``healthcheck_sync``), where a non-bool
        counts as healthy. It only reads a flag: no CUDA call that could wait behind a pass.
        """
        return bool(self.service.healthy())

    @concurrent(max=16)
    async def predict(
        self,
        query: str = Input(description="The search query or reference text."),
        documents: list[str] = Input(description="The documents to rank: a JSON array of strings."),
        instruction: str = Input(
            default=DEFAULT_INSTRUCTION,
            description="English task instruction. Omit it for the default; an empty one is kept.",
        ),
        top_k: int = Input(
            default=DEFAULT_TOP_K,
            ge=0,
            description="How many of the best documents to return; 0 returns all.",
        ),
        batch_size: int = Input(
            default=DEFAULT_BATCH_SIZE,
            ge=1,
            description="Most documents per forward pass (passes are also bounded by tokens).",
        ),
        max_length: int = Input(
            default=DEFAULT_MAX_LENGTH,
            ge=1,
            le=32768,  # MAX_LENGTH_LIMIT; Cog drops a name here
            description="Most tokens per prompt; longer documents are truncated at the end.",
        ),
        return_documents: bool = Input(
            default=True,
            description="Include each document's text in the results (false: null).",
        ),
        long_documents: str = Input(
            default=DEFAULT_LONG_DOCUMENTS,
            choices=["truncate", "chunk"],
            description=LONG_DOCUMENTS_HELP,
        ),
        chunk_overlap: int | None = Input(
            default=None,
            ge=0,
            le=32768,  # MAX_LENGTH_LIMIT
            description=CHUNK_OVERLAP_HELP,
        ),
    ) -> Output:
        request = RerankRequest.build(
            self.service.limits,
            query=query,
            documents=documents,
            instruction=instruction,
            top_k=top_k,
            max_length=max_length,
            batch_size=batch_size,
            return_documents=return_documents,
            long_documents=long_documents,
            chunk_overlap=chunk_overlap,
        )
        result, metrics = await self.service.rerank(request)
        scope = current_scope()
        for name, value in metrics.items():
            scope.record_metric(name, value)
        return Output.model_validate(result.to_dict())
