"""The ASGI app: the rerank handler at /v2/rerank, /v1/rerank and /rerank; /health; /metrics.

FastAPI over Starlette: the routes' bodies are read by :mod:`.schemas` (so that errors are the
Cog path's), and FastAPI adds the OpenAPI page (``/docs``, ``/openapi.json``) describing them.

The model loads in a thread once the server listens, so ``/health`` can say 503 while it loads
(and rerank calls get 503 too); if loading fails the server logs one line and stops
(``on_failure``). A request whose client leaves is cancelled: its documents leave the queue at
the next pass boundary, as through Cog. On SIGTERM uvicorn stops listening, answers the
requests in flight, then the app closes the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi

from ..service import RerankService
from . import schemas
from .errors import ApiError, ClientGone, error_body, from_service
from .guard import Bounds, Guard
from .metrics import CONTENT_TYPE, ServeMetrics

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class AppOptions:
    model_name: str  # answered as "model" when a request names none
    api_key: str | None
    bounds: Bounds


class Serving:
    """The service once loaded, or why there is none."""

    def __init__(self, load: Callable[[], RerankService], metrics: ServeMetrics) -> None:
        self.load = load
        self.metrics = metrics
        self.service: RerankService | None = None
        self.failure: str | None = None
        self.on_failure: Callable[[], None] = lambda: None

    def start(self) -> None:
        threading.Thread(target=self._load, name="reranker-load", daemon=True).start()

    def _load(self) -> None:
        try:
            service = self.load()
        except BaseException as exc:  # one clear line, as Cog's setup log has it
            line = (str(exc).strip().splitlines() or [""])[0]
            self.failure = f"{type(exc).__name__}: {line}"
            log.error("setup failed: %s", self.failure)
            self.on_failure()
            return
        self.metrics.watch(service)
        self.service = service
        log.info("ready: %s", service.source)

    def ready(self) -> RerankService:
        if self.failure is not None:
            raise ApiError(503, f"the model failed to load: {self.failure}", kind="unavailable")
        if self.service is None:
            raise ApiError(503, "the model is still loading; retry shortly", kind="unavailable")
        return self.service

    def close(self) -> None:
        if self.service is not None:
            self.service.close()


def create_app(load: Callable[[], RerankService], options: AppOptions) -> Any:
    """The app, wrapped in its :class:`~.guard.Guard`; ``app.state.serving`` is its
    :class:`Serving` (set ``serving.on_failure`` to stop the server when loading fails)."""
    metrics = ServeMetrics()
    serving = Serving(load, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        serving.start()
        try:
            yield
        finally:
            await asyncio.to_thread(serving.close)

    app = FastAPI(
        title="Qwen3-Reranker",
        summary="Cohere, Jina, vLLM and text-embeddings-inference compatible rerank API",
        lifespan=lifespan,
    )
    app.state.serving = serving
    app.state.metrics = metrics
    for route in schemas.ROUTES:
        app.add_api_route(
            route.path,
            _rerank_handler(route, serving, metrics, options.model_name),
            methods=["POST"],
            name=f"rerank {route.path}",
            summary=_SUMMARIES[route.path],
            openapi_extra=_openapi_body(route),
        )

    @app.get("/health", summary="200 when ready; 503 while loading or after a GPU failure")
    def health() -> Response:
        if serving.failure is not None:
            return _json(503, {"status": "failed", "error": serving.failure})
        service = serving.service
        if service is None:
            return _json(503, {"status": "loading"})
        if not service.healthy():
            return _json(503, {"status": "unhealthy", "error": service.device_failure})
        return _json(200, {"status": "ready"})

    @app.get("/metrics", summary="Prometheus metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    guarded = Guard(
        app,
        api_key=options.api_key,
        bounds=options.bounds,
        metrics=metrics,
        routes=[r.path for r in schemas.ROUTES],
    )
    guarded.state = app.state  # type: ignore[attr-defined]
    return guarded


def _rerank_handler(
    route: schemas.Route, serving: Serving, metrics: ServeMetrics, model_name: str
) -> Callable[[Request], Awaitable[Response]]:
    async def rerank(request: Request) -> Response:
        started = time.perf_counter()
        tei = False
        renames = schemas.RENAMES
        metrics.in_flight.inc()
        try:
            body = schemas.parse_body(await request.body())
            tei = schemas.is_tei(body, route)
            service = serving.ready()  # a 503 in the shape the client reads
            call = schemas.translate(body, route, service.limits)
            renames = call.renames
            try:
                if call.max_tokens_per_doc is not None:
                    encoder = service.reranker.encoder
                    call = await asyncio.to_thread(schemas.cap_document_tokens, call, encoder)
                result, scored = await _unless_client_leaves(
                    request, service.rerank(call.request, say=log.info)
                )
            except (ApiError, ClientGone):
                raise
            except Exception as exc:
                raise from_service(exc, renames) from None
            content = schemas.answer(call, result, model_name)
            metrics.scored(scored, time.perf_counter() - started)
            return Response(_dumps(content), media_type="application/json")
        except ApiError as error:
            metrics.errors.labels(error.kind).inc()
            return Response(
                error_body(error, tei=tei), status_code=error.status, media_type="application/json"
            )
        except ClientGone:
            metrics.errors.labels("client_left").inc()
            return Response(status_code=499)
        finally:
            metrics.in_flight.dec()

    return rerank


async def _unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result; cancelled (and :class:`ClientGone` raised) if the client
    disconnects first."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientGone
    finally:
        gone.cancel()
        if not task.done():  # this coroutine itself was cancelled
            task.cancel()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _dumps(content: object) -> bytes:
    return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def _json(status: int, content: object) -> Response:
    return Response(_dumps(content), status_code=status, media_type="application/json")


_SUMMARIES = {
    "/v2/rerank": "Cohere v2 rerank (return_documents defaults to false)",
    "/v1/rerank": "Cohere v1, Jina and vLLM rerank",
    "/rerank": "vLLM and Jina rerank; text-embeddings-inference's with texts",
}


def _ref(model: type) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _openapi_body(route: schemas.Route) -> dict[str, Any]:
    request = _ref(schemas.RerankBody)
    answer: dict[str, Any] = _ref(schemas.RerankAnswer)
    if route.tei:
        request = {"oneOf": [request, _ref(schemas.TEIBody)]}
        answer = {"oneOf": [answer, {"type": "array", "items": _ref(schemas.TEIRank)}]}
    error = {"content": {"application/json": {"schema": _ref(schemas.ErrorAnswer)}}}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
        "responses": {
            "200": {"description": "ranked", "content": {"application/json": {"schema": answer}}},
            "400": {"description": "a bad field, named", **error},
            "401": {"description": "API key missing or wrong", **error},
            "413": {"description": "body too large", **error},
            "429": {"description": "too many requests at once", **error},
            "503": {"description": "loading, busy, or the GPU failed", **error},
        },
    }


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the wire formats (the routes read raw bodies)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in schemas.DOC_MODELS:
            spec = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(spec.pop("$defs", {}))
            components[model.__name__] = spec
        app.openapi_schema = schema
    return app.openapi_schema
