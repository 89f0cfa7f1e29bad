"""What a server others reach needs before any route runs: a plain ASGI middleware.

* **API key**: with one set, every route but ``/health`` needs ``Authorization: Bearer <key>``
  (the scheme in any case, as RFC 7235 allows), compared in constant time; else 401.
* **Bodies**: a body larger than ``max_body_bytes`` is refused with 413 as soon as its
  ``Content-Length`` (or, chunked, its bytes so far) says so, without reading the rest; one
  that takes longer than ``body_timeout`` seconds to arrive (a slow or stalled client) gets
  408. The body is read here, whole, and handed on.
* **Concurrency**: at most ``max_concurrent`` requests with a body are being read or answered
  at once; beyond that 429 at once, with ``Retry-After`` (the in-flight bounds behind it queue
  the admitted ones fairly). This bounds the memory bodies can hold: ``max_concurrent *
  max_body_bytes``.

Every answer is counted in the metrics by route and status.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from .errors import ApiError, error_body
from .metrics import ServeMetrics

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health"})


@dataclass(frozen=True)
class Bounds:
    max_body_bytes: int
    body_timeout: float
    max_concurrent: int


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        bounds: Bounds,
        metrics: ServeMetrics,
        routes: Collection[str],
    ) -> None:
        self.app = app
        self.key = f"bearer {api_key}".encode() if api_key else None
        self.bounds = bounds
        self.metrics = metrics
        self.routes = frozenset(routes) | OPEN_PATHS | {"/metrics"}
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in self.routes else "other"

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(route, str(message["status"])).inc()
            await send(message)

        if self.key is not None and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
            error = ApiError(401, "a valid API key is required: Authorization: Bearer <key>")
            await self._refuse(counted, error, "unauthorized", [(b"www-authenticate", b"Bearer")])
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, counted)
            return
        if self.active >= self.bounds.max_concurrent:
            error = ApiError(
                429, f"the server is answering {self.active} requests, its most; retry shortly"
            )
            await self._refuse(counted, error, "overloaded", [(b"retry-after", b"1")])
            return
        self.active += 1
        try:
            try:
                body = await self._read_body(scope, receive)
            except ApiError as error:
                close = [(b"connection", b"close")]
                await self._refuse(counted, error, error.kind, close)
                return
            await self.app(scope, _replay(body, receive), counted)
        finally:
            self.active -= 1

    def _authorized(self, scope: Scope) -> bool:
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, token = given.partition(b" ")
        presented = scheme.lower() + b" " + token.strip()
        return hmac.compare_digest(presented, self.key)  # type: ignore[arg-type]

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.bounds.max_body_bytes
        too_large = ApiError(
            413,
            f"the request body is larger than {limit:,} bytes (RERANKER_MAX_BODY_BYTES, "
            "--max-body-bytes); send fewer or shorter documents",
            kind="too_large",
        )
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.bounds.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ApiError(400, "the client left before sending its body", kind="gone")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise too_large
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            raise ApiError(
                408,
                f"the request body took longer than {self.bounds.body_timeout:g} s to arrive",
                kind="slow_client",
            ) from None

    async def _refuse(
        self, send: Send, error: ApiError, kind: str, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.metrics.errors.labels(kind).inc()
        body = error_body(error)
        await send(
            {
                "type": "http.response.start",
                "status": error.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the app: the whole body once, then the client's own (which reports a
    disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
