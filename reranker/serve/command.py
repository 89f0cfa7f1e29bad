"""``rerank serve`` (and ``python -m reranker serve``): flags, settings, then uvicorn.

The service's settings are the ``RERANKER_*`` variables every front end reads
(``Settings.from_env``); ``--model``, ``--device`` and ``--dtype`` override theirs. Only the
server's own knobs are added here, each with a variable of the same family:
``RERANKER_API_KEY``, ``RERANKER_MAX_BODY_BYTES``, ``RERANKER_MAX_CONCURRENT_REQUESTS``,
``RERANKER_BODY_TIMEOUT``, ``RERANKER_HEADER_TIMEOUT``.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TypeVar

from ..config import DTYPE_NAMES, HUB_MODEL_ID, Settings, SettingsError, check_device_name, env_name

T = TypeVar("T", int, float)

# 8 MiB: a thousand documents of 8,000 characters. text-embeddings-inference's default is 2 MB.
DEFAULT_MAX_BODY_BYTES = 8 << 20
# Requests read or answered at once (beyond: 429). Admitted ones queue fairly behind the
# in-flight bounds, so this only bounds the memory bodies hold (with the body size).
DEFAULT_MAX_CONCURRENT_REQUESTS = 64
# Seconds a request body may take to arrive: longer is a stalled or hostile client (408).
DEFAULT_BODY_TIMEOUT_S = 30.0
# Seconds a connection may wait for a request's headers to end (slow-header clients: closed).
DEFAULT_HEADER_TIMEOUT_S = 10.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rerank serve",
        description="Serve the reranker over the rerank APIs RAG tools speak: Cohere "
        "(/v2/rerank, /v1/rerank), Jina and vLLM (/v1/rerank, /rerank), text-embeddings-"
        "inference (/rerank with texts). Settings: the RERANKER_* variables.",
    )
    p.add_argument(
        "--model",
        default=None,
        help="a local model directory or a hub id (default: RERANKER_MODEL, else the weights "
        "baked into the image, else RERANKER_WEIGHTS_URL, else the hub)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--api-key",
        default=None,
        help="require Authorization: Bearer KEY on every route but /health (default: "
        "RERANKER_API_KEY; prefer the variable, a flag shows in the process list)",
    )
    p.add_argument("--served-model-name", default=None, help="the model name answers carry")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: RERANKER_DEVICE)")
    p.add_argument("--dtype", default=None, choices=DTYPE_NAMES)
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=None,
        help=f"largest request body (default: RERANKER_MAX_BODY_BYTES or {DEFAULT_MAX_BODY_BYTES})",
    )
    p.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=None,
        help="requests read or answered at once, beyond which 429 (default: "
        f"RERANKER_MAX_CONCURRENT_REQUESTS or {DEFAULT_MAX_CONCURRENT_REQUESTS})",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="most seconds a body may take to arrive, beyond which 408 (default: "
        f"RERANKER_BODY_TIMEOUT or {DEFAULT_BODY_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="most seconds a connection may wait for a request's headers before it is closed "
        f"(default: RERANKER_HEADER_TIMEOUT or {DEFAULT_HEADER_TIMEOUT_S:g})",
    )
    return p


def _setting(
    name: str,
    flag: T | None,
    environ: Mapping[str, str],
    default: T,
    parse: Callable[[str], T],
    what: str,
    valid: Callable[[T], bool],
) -> T:
    """A server setting: its flag, else its variable (parsed), else ``default``; an error
    naming whichever was given when it is not ``what`` it must be."""
    raw = environ.get(name, "").strip()
    if flag is not None:
        value, label = flag, "--" + name.removeprefix("RERANKER_").lower().replace("_", "-")
    elif raw:
        try:
            value, label = parse(raw), name
        except ValueError:
            raise SettingsError(f"{name} must be {what}, not {raw!r}") from None
    else:
        return default
    if not valid(value):
        raise SettingsError(f"{label} must be {what}, not {value}")
    return value


def _positive(name: str, flag: int | None, environ: Mapping[str, str], default: int) -> int:
    return _setting(name, flag, environ, default, int, "a positive integer", lambda v: v >= 1)


def _seconds(name: str, flag: float | None, environ: Mapping[str, str], default: float) -> float:
    what = "a positive number of seconds"
    return _setting(name, flag, environ, default, float, what, lambda v: 0 < v < float("inf"))


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = parser().parse_args(argv)
    env = os.environ if environ is None else environ
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    try:
        settings = Settings.from_env(env)
        if args.model is not None:
            from ..loading.weights import model_argument

            settings = replace(settings, model=model_argument(args.model))
        if args.device is not None:
            settings = replace(settings, device=check_device_name("--device", args.device))
        if args.dtype is not None:
            settings = replace(settings, dtype=args.dtype)
        max_body = _positive(
            env_name("max_body_bytes"), args.max_body_bytes, env, DEFAULT_MAX_BODY_BYTES
        )
        concurrent = _positive(
            env_name("max_concurrent_requests"),
            args.max_concurrent_requests,
            env,
            DEFAULT_MAX_CONCURRENT_REQUESTS,
        )
        body_timeout = _seconds(
            env_name("body_timeout"), args.body_timeout, env, DEFAULT_BODY_TIMEOUT_S
        )
        header_timeout = _seconds(
            env_name("header_timeout"), args.header_timeout, env, DEFAULT_HEADER_TIMEOUT_S
        )
    except ValueError as exc:  # SettingsError included
        print(f"rerank serve: error: {exc}", file=sys.stderr)
        return 2
    api_key = args.api_key or env.get(env_name("api_key"), "").strip() or None
    if api_key is None and not is_loopback(args.host):
        logging.warning(
            "listening on %s without an API key: anyone who reaches it can use it (set %s)",
            args.host,
            env_name("api_key"),
        )
    import uvicorn

    from ..service import RerankService
    from .app import AppOptions, create_app
    from .guard import Bounds
    from .protocol import with_header_deadline

    options = AppOptions(
        model_name=args.served_model_name or settings.model or HUB_MODEL_ID,
        api_key=api_key,
        bounds=Bounds(
            max_body_bytes=max_body, body_timeout=body_timeout, max_concurrent=concurrent
        ),
    )
    app = create_app(lambda: RerankService.start(settings), options)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_config=None,
            timeout_keep_alive=5,
            http=with_header_deadline(header_timeout),
        )
    )
    serving = app.state.serving

    def stop() -> None:
        server.should_exit = True

    serving.on_failure = stop
    server.run()
    return 1 if serving.failure is not None or not server.started else 0


if __name__ == "__main__":
    sys.exit(main())
