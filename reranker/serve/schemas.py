"""The wire formats: a JSON body -> a ``RerankRequest``, a ``RerankResult`` -> a JSON answer.

One rerank body serves Cohere v2 and v1, Jina and vLLM (``query``, ``documents``, ``top_n``,
...); a ``/rerank`` body with ``texts`` is text-embeddings-inference's and is answered as TEI
answers. Fields are translated by name only (``top_n`` -> ``top_k``, ``texts`` ->
``documents``) and checked by ``RerankRequest.build``, the Cog path's one check, so a bad
value fails with the Cog path's message, the field named as the client spelled it. Absent and
``null`` fields keep the package's defaults; unknown fields (``priority``, ``rank_fields``,
``max_chunks_per_doc``, ``relevant_spans``, ``score_threshold``...) are ignored.

The pydantic models at the end document the formats in the OpenAPI page; bodies are not parsed
through them (their messages would not be the Cog path's). ``tests/test_serve.py`` keeps their
fields and the translation's the same.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..config import MAX_LENGTH_LIMIT, Limits
from ..request.options import RerankOptions, specs
from ..request.prepare import RerankRequest
from ..request.results import RerankResult
from ..text.tokenization import PromptEncoder
from ..validation import check_bool, check_int, valid_unicode
from .errors import ApiError, invalid


@dataclass(frozen=True)
class Route:
    """One path the rerank handler is mounted at, and what differs between them."""

    path: str
    return_documents: bool  # when the body does not say: Cohere v2 has no such field
    api_version: str  # meta.api_version.version, as Cohere reports it
    tei: bool  # a body with texts is text-embeddings-inference's


ROUTES = (
    Route("/v2/rerank", return_documents=False, api_version="2", tei=False),
    Route("/v1/rerank", return_documents=True, api_version="1", tei=False),
    Route("/rerank", return_documents=True, api_version="1", tei=True),
)

# Body field -> RerankRequest.build argument (besides query and documents): every option of
# RerankOptions under its own name, and Cohere's name for top_k (which wins if both are sent).
OPTIONS = {**{name: name for name, _, _ in specs()}, "top_n": "top_k"}
RENAMES = {arg: field for field, arg in OPTIONS.items() if arg != field}
TEI_RENAMES = {"documents": "texts"}
# Other fields read here: model, max_tokens_per_doc; TEI: raw_scores, return_text, truncate,
# truncation_direction.
TEI_FLAGS = ("raw_scores", "return_text", "truncate")
IMAGE_KEYS = frozenset({"image", "image_url", "images"})


@dataclass(frozen=True)
class Call:
    """A checked rerank call: the package's request and what shapes the answer."""

    request: RerankRequest
    route: Route
    tei: bool = False
    model: str | None = None  # echoed; any name is accepted
    max_tokens_per_doc: int | None = None
    raw_scores: bool = False
    truncate: bool = True  # TEI's truncate=false: a text longer than the window is a 413

    @property
    def renames(self) -> Mapping[str, str]:
        return TEI_RENAMES if self.tei else RENAMES


def parse_body(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 that says what is wrong with it."""
    if not raw.strip():
        raise ApiError(400, "the request body is empty: send a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8; absurdly deep nesting
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ApiError(400, f"the request body is not valid JSON: {detail}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {_json_kind(body)}")
    return body


def is_tei(body: Mapping[str, Any], route: Route) -> bool:
    return route.tei and "texts" in body and "documents" not in body


def translate(body: Mapping[str, Any], route: Route, limits: Limits) -> Call:
    """A :class:`Call` from a parsed body; raises :class:`ApiError` (400) naming the field."""
    if is_tei(body, route):
        return _translate_tei(body, route, limits)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, f"model must be a string, got {_kind(model)}", param="model")
    options = {arg: body[field] for field, arg in OPTIONS.items() if body.get(field) is not None}
    options.setdefault("return_documents", route.return_documents)
    try:
        cap = body.get("max_tokens_per_doc")
        if cap is not None:
            check_int("max_tokens_per_doc", cap, low=1)
        request = RerankRequest.build(
            limits,
            query=_text("query", body.get("query")),
            documents=_texts("documents", body.get("documents")),
            **options,
        )
    except ValueError as exc:
        raise invalid(exc, RENAMES) from None
    name = None if model is None else valid_unicode(model)
    return Call(request, route, model=name, max_tokens_per_doc=cap)


def _translate_tei(body: Mapping[str, Any], route: Route, limits: Limits) -> Call:
    """text-embeddings-inference's body (router/src/http/types.rs ``RerankRequest``). Every
    text is answered (no top_n). A text longer than the model's window is cut at its end
    (TEI's ``--auto-truncate``) unless ``truncate`` is false, which makes it a 413 as TEI
    answers; ``truncation_direction`` Left (cut the start) is refused by name."""
    try:
        flags = {n: check_bool(n, body[n]) for n in TEI_FLAGS if body.get(n) is not None}
        direction = body.get("truncation_direction")
        if direction is not None and str(direction).lower() != "right":
            raise ValueError(
                f"truncation_direction must be Right, got {direction!r}: documents are cut at "
                "their end, as the model card does"
            )
        request = RerankRequest.build(
            limits,
            query=_text("query", body.get("query")),
            documents=body.get("texts"),  # TEI's texts are strings: no {"text": ...} objects
            return_documents=flags.get("return_text", False),
        )
    except ValueError as exc:
        raise invalid(exc, TEI_RENAMES) from None
    return Call(
        request,
        route,
        tei=True,
        raw_scores=flags.get("raw_scores", False),
        truncate=flags.get("truncate", True),
    )


def _text(name: str, value: Any) -> Any:
    """A query or document as the package takes it: a ``{"text": ...}`` object gives its text
    (Jina, Cohere v1); an image is refused by name; anything else is left to the checks."""
    if not isinstance(value, dict):
        return value
    field = name.split("[")[0]
    if IMAGE_KEYS & value.keys() or value.get("type") in ("image", "image_url", "multimodal"):
        raise ApiError(400, f"{name} is an image: this reranker ranks text only", param=field)
    if "text" not in value:
        raise ApiError(400, f"{name} must be a string or an object with a text field", param=field)
    text = value["text"]
    if not isinstance(text, str):
        raise ApiError(400, f"{name}.text must be a string, got {_kind(text)}", param=field)
    return text


def _texts(name: str, value: Any) -> Any:
    if not isinstance(value, list) or not any(isinstance(v, dict) for v in value):
        return value
    return [_text(f"{name}[{i}]", v) for i, v in enumerate(value)]


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def cap_document_tokens(call: Call, encoder: PromptEncoder) -> Call:
    """``max_tokens_per_doc`` as the request's ``max_length``: the prompt's fixed tokens, its
    instruction and query, and at most that many of each document's tokens (within the model's
    ``MAX_LENGTH_LIMIT``). Longer documents are cut at their end, never refused; with
    ``long_documents=chunk`` it is the room each window gives a document. Tokenizes the query
    and instruction: call it off the event loop."""
    if call.max_tokens_per_doc is None:
        return call
    request = call.request
    head = encoder.head_ids(request.instruction, request.query)
    room = encoder.fixed_tokens + len(head) + call.max_tokens_per_doc
    options = replace(request.options, max_length=min(MAX_LENGTH_LIMIT, room))
    return replace(call, request=replace(request, options=options))


def answer(call: Call, result: RerankResult, model: str) -> object:
    """The JSON answer for ``result`` in the shape ``call`` was asked in."""
    if not call.truncate and (cut := [r.index for r in result.results if r.truncated]):
        limit = call.request.options.max_length
        raise ApiError(
            413,
            f"texts[{min(cut)}] is longer than the model's window ({limit:,} tokens with the "
            "prompt) and truncate is false",
            param="texts",
            kind="too_long",
        )
    if call.tei:
        return [_tei_item(call, r) for r in result.results]
    results = []
    for r in result.results:
        item: dict[str, Any] = {"index": r.index, "relevance_score": r.score}
        if call.request.options.return_documents:
            item["document"] = {"text": r.document}
        item.update(logit=r.logit, tokens=r.tokens, truncated=r.truncated)
        if r.windows is not None:
            item.update(windows=r.windows, best_span=list(r.best_span or ()))
        results.append(item)
    tokens = result.usage.total_tokens
    usage: dict[str, Any] = {
        "prompt_tokens": tokens,
        "total_tokens": tokens,
        "truncated_documents": result.usage.truncated_documents,
    }
    if result.usage.windows is not None:
        usage["windows"] = result.usage.windows
    return {
        "id": str(uuid.uuid4()),
        "model": call.model if call.model is not None else model,
        "results": results,
        "usage": usage,
        "meta": {
            "api_version": {"version": call.route.api_version},
            # as Cohere counts them: a query with up to 100 documents is one search unit
            "billed_units": {"search_units": math.ceil(result.total_documents / 100)},
            "tokens": {"input_tokens": tokens, "output_tokens": 0},
        },
    }


def _tei_item(call: Call, r: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"index": r.index, "score": r.logit if call.raw_scores else r.score}
    if call.request.options.return_documents:
        item["text"] = r.document
    return item


# -- the OpenAPI page's description of the formats --------------------------------------------


class TextDocument(BaseModel):
    text: str


class _RerankFields(BaseModel):
    """Cohere v2/v1, Jina and vLLM. Unknown fields are ignored."""

    model_config = ConfigDict(extra="allow")

    query: str | TextDocument
    documents: list[str | TextDocument] = Field(description="strings, or objects with a text")
    top_n: int | None = Field(None, description="how many results; absent, null or 0: all")
    return_documents: bool | None = Field(
        None, description="include each document's text; default false on /v2, true elsewhere"
    )
    max_tokens_per_doc: int | None = Field(
        None, description="cut each document to this many tokens (never an error)"
    )
    model: str | None = Field(None, description="echoed in the answer; any name is accepted")


# The package's own options, from RerankOptions (the OpenAPI page lists them).
RerankBody = create_model(
    "RerankBody",
    __base__=_RerankFields,
    __doc__=_RerankFields.__doc__,
    **{
        name: (get_type_hints(RerankOptions)[name] | None, Field(None, description=option.help))
        for name, option, _ in specs()
        if name not in _RerankFields.model_fields
    },
)


class TEIBody(BaseModel):
    """text-embeddings-inference's /rerank."""

    model_config = ConfigDict(extra="allow")

    query: str
    texts: list[str]
    raw_scores: bool | None = Field(None, description="score is the logit, not P(yes)")
    return_text: bool | None = None
    truncate: bool | None = Field(None, description="accepted; long texts are always cut")
    truncation_direction: str | None = Field(None, description="Right only")


class RankedItem(BaseModel):
    index: int
    relevance_score: float = Field(description="P(yes) in [0, 1]")
    document: TextDocument | None = Field(None, description="only when asked; never null")
    logit: float = Field(description="logit_yes - logit_no (float32)")
    tokens: int
    truncated: bool
    windows: int | None = Field(None, description="long_documents=chunk only")
    best_span: list[int] | None = Field(None, description="long_documents=chunk only")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    truncated_documents: int
    windows: int | None = None


class RerankAnswer(BaseModel):
    id: str
    model: str
    results: list[RankedItem]
    usage: Usage
    meta: dict[str, Any]


class TEIRank(BaseModel):
    index: int
    score: float
    text: str | None = None


class ErrorAnswer(BaseModel):
    message: str
    detail: str
    error: dict[str, Any]


DOC_MODELS = (RerankBody, TEIBody, RerankAnswer, TEIRank, ErrorAnswer)
