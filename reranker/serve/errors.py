"""Every failure as an HTTP answer: a status, one clear line, the field it is about.

Input errors keep the message ``RerankRequest.build`` (and the tokenizer's budget check) wrote
for the Cog path, with the field renamed to what the client sent (``top_k`` -> ``top_n``,
``documents`` -> ``texts``). The body carries the message where each family of clients looks
for it: ``message`` (Cohere), ``detail`` (Jina, FastAPI) and ``error.message`` (vLLM, OpenAI);
a TEI-shaped request gets TEI's ``{"error", "error_type"}``. No traceback ever reaches a
client: anything unexpected is logged here and answered as one line.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping

from ..model.engine import DocumentTooLargeError
from ..model.faults import DeviceFailedError
from ..model.scorer import NonFiniteError
from ..runtime.admission import AdmissionTimeout

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer other than 200: ``status``, ``message``, the ``param`` it names, and the
    ``kind`` counted in the metrics."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, kind: str = "invalid_request"
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    408: "RequestTimeoutError",
    413: "PayloadTooLargeError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}
# text-embeddings-inference's ErrorType (router/src/http/types.rs), by status.
_TEI_TYPES = {400: "validation", 413: "validation", 429: "overloaded", 503: "unhealthy"}


def error_body(error: ApiError, *, tei: bool = False) -> bytes:
    if tei:
        kind = _TEI_TYPES.get(error.status, "backend")
        body: object = {"error": error.message, "error_type": kind}
    else:
        body = {
            "message": error.message,
            "detail": error.message,
            "error": {
                "message": error.message,
                "type": _TYPES.get(error.status, "Error"),
                "param": error.param,
                "code": error.status,
            },
        }
    return json.dumps(body, ensure_ascii=False).encode()


_LEADING_NAME = re.compile(r"[a-z_]+")


def invalid(exc: ValueError, renames: Mapping[str, str]) -> ApiError:
    """A 400 from a ``ValueError`` whose message starts with the field's name (the rule of
    ``reranker.validation``), the name given as the client spelled it."""
    message = str(exc)
    match = _LEADING_NAME.match(message)
    param = match.group(0) if match else None
    if param in renames:
        message = renames[param] + message[match.end() :]  # type: ignore[union-attr]
        param = renames[param]
    return ApiError(400, message, param=param)


def from_service(exc: Exception, renames: Mapping[str, str]) -> ApiError:
    """What a failure of ``RerankService.rerank`` means for the client."""
    if isinstance(exc, ValueError):
        return invalid(exc, renames)
    if isinstance(exc, AdmissionTimeout):
        return ApiError(503, str(exc), kind="busy")
    if isinstance(exc, DeviceFailedError):
        return ApiError(503, str(exc), kind="device_failed")
    if isinstance(exc, DocumentTooLargeError):
        return ApiError(400, f"{exc} (send shorter documents or lower max_tokens_per_doc)")
    if isinstance(exc, NonFiniteError):
        return ApiError(500, str(exc), kind="non_finite")
    if isinstance(exc, RuntimeError) and "shut down" in str(exc):
        return ApiError(503, "the server is shutting down; retry on another instance", kind="busy")
    log.error("rerank failed unexpectedly", exc_info=exc)
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return ApiError(500, f"internal error while scoring: {first}", kind="internal")
