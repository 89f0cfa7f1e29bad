"""Soak: minutes of mixed traffic against the real Cog server on 127.0.0.1, watching resources.

    uv run python bench/soak.py                        # ~4-5 minutes, tiny random model
    uv run python bench/soak.py --requests 20 --seconds 30 --out /tmp/soak-quick
    uv run python bench/soak.py --smoke                # seconds: 24 requests, 4 clients, temp --out

Up to ``--clients`` threads (default: the server's concurrency, 16) send, until ``--requests``
or ``--seconds`` runs out:

* valid requests (varying documents, lengths, top_k, return_documents, instructions, unicode,
  chat-template control tokens as plain text), each compared with the library's solo answer
  (``Reranker.rank`` on the same model, float32): same order, scores within 1e-5;
* large valid requests (thousands of documents, documents past max_length), compared the same;
* hostile requests (wrong types, empty, nulls, too many documents, oversize strings, huge
  max_length, unknown fields, broken JSON): each must fail clearly, naming the field, with no
  5xx, no traceback and no hang;
* cancelled requests: ``Prefer: respond-async`` + ``POST /predictions/{id}/cancel`` (the final
  state arrives by webhook) and sync requests whose client hangs up.

Every second it samples the server's process tree (the coglet parent and its Python worker,
found through /proc): RSS, open file descriptors, threads, and the health-check latency. At
the end the server must go back to READY (cancelled and dropped requests free their slots) and
answer a solo request. Writes ``<out>.txt`` (summary) and ``<out>.json`` (all samples and
failures) with the command that produced them. Exit status 1 if any valid answer differed
from solo, any hostile request got an unclear answer, a request hung, a slot stayed held,
health was ever other than READY/BUSY, or the server (or its worker) died.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from load import WORDS, mismatch, tiny_model  # noqa: E402
from soak_report import summarize, write  # noqa: E402

from devtools.hostile import CONTROL, UNICODE, rejected_cases  # noqa: E402
from devtools.localserver import LocalCogServer, Webhooks, retry_409  # noqa: E402
from devtools.procstat import TreeSampler  # noqa: E402
from reranker import Reranker, Settings  # noqa: E402

# The HTTP API's default for an omitted top_k (predict.py, README); the library's is "all".
HTTP_DEFAULT_TOP_K = 5
REQUEST_TIMEOUT = 180.0  # seconds; a request still unanswered after this counts as a hang
# coglet 0.23.1 race (replicate/cog crates/coglet-python/src/worker_bridge.rs, predict() and
# cancel()): an async prediction's slot is first marked as a *sync* prediction of the bridge
# thread and only later given its asyncio future. A cancel in that window injects
# CancelationException into the bridge thread instead of cancelling the task, and the async
# branch (unlike the sync one) does not map it to "canceled". The prediction ends "failed":
# "Failed to submit coroutine: CancelationException" (nothing ran), or "Async prediction
# failed: CancelationException" after the coroutine ran to the end (the cancel was ignored).
# Not this project's code; counted separately, not as a failure.
COGLET_RACE = "CancelationException"
KINDS = {"valid": 50, "hostile": 25, "large": 5, "cancel": 10, "disconnect": 10}


# -- request generation ---------------------------------------------------------------------


def text(rng: random.Random, words: int) -> str:
    parts = rng.choices(WORDS, k=words)
    for _ in range(rng.choice([0, 0, 0, 1, 3])):
        parts.insert(rng.randrange(len(parts) + 1), rng.choice(UNICODE + CONTROL))
    return " ".join(parts)


def valid_spec(rng: random.Random, i: int) -> dict:
    """One request the server must answer exactly as the library does alone."""
    n = rng.choice([1, 2, 3, 5, 8, 13, 20, 40])
    docs = [text(rng, rng.choice([0, 1, 5, 20, 60, 150])) for _ in range(n)]
    if n > 2 and rng.random() < 0.2:
        docs[-1] = docs[0]  # duplicates are scored once and reported twice
    spec: dict = {"query": f"{i}: {text(rng, rng.randint(1, 12))}?", "documents": docs}
    # None is an explicit JSON null. Without the schema `cog build` writes, coglet hands it to
    # predict() as is, which treats it as the library does (top_k: all, instruction: the
    # default); a built image rejects it before predict() (shared/notes/cog.md).
    for key, choices in {
        "top_k": [0, 1, 3, 5, n, n + 7, None],
        "return_documents": [True, False],
        "instruction": ["", "Find passages about tea", rng.choice(UNICODE + CONTROL), None],
        "max_length": [128, 512, 8192, 32768],
        "batch_size": [1, 4, 256],
    }.items():
        if rng.random() < 0.4:  # else omitted: the server's default
            spec[key] = rng.choice(choices)
    return spec


def large_specs(rng: random.Random) -> list[dict]:
    """Many documents, documents past max_length, many duplicates."""
    many = [f"{i} {text(rng, rng.randint(5, 40))}" for i in range(2500)]
    return [
        {"query": "many documents", "documents": many, "top_k": 10},
        {"query": "long documents", "documents": [text(rng, 9000) for _ in range(4)], "top_k": 0},
        {
            "query": "longer than the default max_length",
            "documents": [text(rng, 18000), text(rng, 300)],
            "max_length": 16384,
            "return_documents": False,
        },
        {"query": "duplicates", "documents": [many[i % 40] for i in range(3000)], "top_k": 3},
    ]


def solo(reranker: Reranker, spec: dict) -> dict:
    """The library's answer for ``spec`` alone, with the HTTP API's defaults."""
    kwargs = {k: spec[k] for k in ("instruction", "max_length", "batch_size") if k in spec}
    kwargs["top_k"] = spec.get("top_k", HTTP_DEFAULT_TOP_K)
    kwargs["return_documents"] = spec.get("return_documents", True)
    return reranker.rank(spec["query"], spec["documents"], **kwargs).to_dict()


# -- traffic ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str
    name: str
    ok: bool
    seconds: float
    detail: str = ""
    extra: dict = field(default_factory=dict)


class Soak:
    def __init__(
        self, server: LocalCogServer, reranker: Reranker, args: argparse.Namespace
    ) -> None:
        self.server, self.args = server, args
        rng = random.Random(args.seed)
        self.pool_valid = [valid_spec(rng, i) for i in range(args.pool)]
        self.pool_large = large_specs(rng)
        self.pool_hostile = rejected_cases(reranker.limits)
        started = time.perf_counter()
        self.want_valid = [solo(reranker, s) for s in self.pool_valid]
        self.want_large = [solo(reranker, s) for s in self.pool_large]
        self.solo_seconds = time.perf_counter() - started
        self.slow = [f"{i} {text(rng, rng.randint(10, 40))}" for i in range(6000)]
        self.hooks = Webhooks()
        self.dead = threading.Event()  # replaced by the sampler's
        self.lock = threading.Lock()
        self.issued = 0
        self.deadline = 0.0

    def ticket(self) -> int | None:
        with self.lock:
            if (
                self.issued >= self.args.requests
                or time.monotonic() > self.deadline
                or self.dead.is_set()
            ):
                return None
            self.issued += 1
            return self.issued - 1

    def one(self, ticket: int) -> Outcome:
        rng = random.Random(self.args.seed * 1_000_003 + ticket)
        kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        started = time.perf_counter()
        try:
            outcome = getattr(self, f"send_{kind}")(rng)
        except (OSError, ValueError, http.client.HTTPException) as exc:  # timeouts, resets
            outcome = Outcome(kind, "?", False, 0, f"{type(exc).__name__}: {exc}")
        outcome.seconds = time.perf_counter() - started
        return outcome

    def retry_409(self, send: Callable[[], tuple]) -> tuple:
        """Retried while 409, but not once the server died (a crashed worker leaves coglet
        answering 409 for good)."""
        return retry_409(send, REQUEST_TIMEOUT, self.dead)

    def post(self, inputs: dict) -> tuple[int, dict]:
        return self.retry_409(
            lambda: self.server.predict(inputs, timeout=REQUEST_TIMEOUT, retry_409_for=0)
        )

    def check(self, kind: str, specs: list[dict], wants: list[dict], i: int) -> Outcome:
        started = time.perf_counter()
        status, body = self.post(specs[i])
        why = f"HTTP {status}" if status != 200 else mismatch(body, wants[i])
        return Outcome(kind, f"{kind}#{i}", why is None, time.perf_counter() - started, why or "")

    def send_valid(self, rng: random.Random) -> Outcome:
        i = rng.randrange(len(self.pool_valid))
        return self.check("valid", self.pool_valid, self.want_valid, i)

    def send_large(self, rng: random.Random) -> Outcome:
        i = rng.randrange(len(self.pool_large))
        return self.check("large", self.pool_large, self.want_large, i)

    def send_hostile(self, rng: random.Random) -> Outcome:
        case = rng.choice(self.pool_hostile)
        if case.raw is None:
            status, body = self.post(case.inputs)
            error = str(
                body.get("error") or body.get("detail") or f"{body.get('status')}, no error"
            )
            clear = (status == 200 and body.get("status") == "failed") or status == 422
        else:
            send = lambda: self.server.request(  # noqa: E731
                "POST", "/predictions", case.raw, case.headers, REQUEST_TIMEOUT
            )
            status, raw = self.retry_409(send)
            error = raw.decode(errors="replace")
            clear = 400 <= status < 500 or (status == 200 and '"status":"failed"' in error)
        why = []
        if not clear:
            why.append(f"HTTP {status}, {error[:200]}")
        if case.field not in error:
            why.append(f"error does not name {case.field!r}: {error[:200]}")
        if "Traceback" in error:
            why.append("traceback in the error")
        return Outcome("hostile", case.name, not why, 0, "; ".join(why), {"error": error[:300]})

    def slow_request(self, rng: random.Random) -> dict:
        """Seconds of work (one pass per document): long enough to be cut short."""
        start = rng.randrange(len(self.slow) - 3000)
        return {"query": "slow", "documents": self.slow[start : start + 3000], "batch_size": 1}

    def submit_async(self, rng: random.Random) -> tuple[int, str, bytes]:
        """A slow request with ``Prefer: respond-async``; its final state comes by webhook."""
        return self.server.submit_async(self.slow_request(rng), self.hooks.url, prefix="soak")

    def send_cancel(self, rng: random.Random) -> Outcome:
        status, pid, raw = self.retry_409(lambda: self.submit_async(rng))
        if status != 202:
            return Outcome("cancel", "async", False, 0, f"PUT answered {status}: {raw[:200]!r}")
        time.sleep(rng.choice([0.0, 0.05, 0.3, 1.0, 2.0]))
        cancel_status = self.server.cancel(pid)
        final = self.hooks.wait(pid, REQUEST_TIMEOUT, self.dead)
        state = final and final.get("status")
        extra = {"cancel_http": cancel_status, "final": state}
        if final is None:
            return Outcome("cancel", "async", False, 0, "no final webhook (hung)", extra)
        if cancel_status not in (200, 404):
            return Outcome("cancel", "async", False, 0, f"cancel answered {cancel_status}", extra)
        error = final.get("error") or ""
        if state == "failed" and cancel_status == 200 and COGLET_RACE in error:
            how = "not started" if "submit coroutine" in error else "ran to the end"
            return Outcome(
                "cancel", f"cancel 200 -> failed (coglet race, {how})", True, 0, "", extra
            )
        if state == "failed":
            return Outcome("cancel", "async", False, 0, f"failed: {final.get('error')}", extra)
        return Outcome("cancel", f"cancel {cancel_status} -> {state}", True, 0, "", extra)

    def send_disconnect(self, rng: random.Random) -> Outcome:
        hang_up = rng.choice([0.1, 0.5, 1.5])
        body = json.dumps({"input": self.slow_request(rng)}).encode()
        headers = {"Content-Type": "application/json"}
        try:
            status, _ = self.retry_409(
                lambda: self.server.request("POST", "/predictions", body, headers, hang_up)
            )
        except TimeoutError:
            return Outcome("disconnect", "hung up", True, 0)
        # Answered before the hang-up (fast), or 409 for REQUEST_TIMEOUT: nothing to cancel.
        ok = status in (200, 409)
        return Outcome("disconnect", f"answered {status}", ok, 0, "" if ok else f"HTTP {status}")

    def run(self) -> list[Outcome]:
        self.deadline = time.monotonic() + self.args.seconds
        outcomes: list[Outcome] = []

        def client() -> None:
            while (ticket := self.ticket()) is not None:
                outcome = self.one(ticket)
                with self.lock:
                    outcomes.append(outcome)

        with ThreadPoolExecutor(self.args.clients) as pool:
            for f in [pool.submit(client) for _ in range(self.args.clients)]:
                f.result()
        return outcomes

    def slots_free(self, timeout: float) -> dict:
        n, wait = self.args.concurrency, REQUEST_TIMEOUT
        return self.server.slots_free(
            n, self.hooks, self.slow_request, timeout, wait, self.dead, "soak"
        )


def main() -> int:
    p = argparse.ArgumentParser(
        description="Soak the real Cog server with mixed valid, hostile, cancelled and large "
        "requests; watch RSS, fds and threads.",
    )
    p.add_argument("--model", help="model directory (default: a tiny random Qwen3)")
    p.add_argument(
        "--requests",
        type=int,
        default=100_000,
        help="stop after this many (the warm-up's are extra)",
    )
    p.add_argument("--seconds", type=float, default=150, help="stop sending after this long")
    p.add_argument("--concurrency", type=int, default=16, help="COG_MAX_CONCURRENCY")
    p.add_argument("--clients", type=int, help="client threads (default: --concurrency)")
    p.add_argument("--pool", type=int, default=60, help="distinct valid requests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="RERANKER_X=VALUE",
        help="a setting for the server (repeatable), e.g. RERANKER_MAX_PREFIX_TOKENS=150",
    )
    p.add_argument(
        "--out",
        default=str(ROOT / "bench" / "results" / f"soak-cpu-{time.strftime('%Y-%m-%d')}"),
        help="writes OUT.txt and OUT.json",
    )
    p.add_argument("--smoke", action="store_true", help="24 requests in 8 s, 4 clients, temp --out")
    args = p.parse_args()
    if args.smoke:
        args.requests, args.seconds, args.pool, args.concurrency = 24, 8, 8, 4
        args.out = str(Path(tempfile.mkdtemp(prefix="soak-smoke-")) / "soak")
    args.clients = args.clients or args.concurrency
    tmp = tempfile.TemporaryDirectory()
    model = args.model or tiny_model(Path(tmp.name) / "tiny")
    reranker = Reranker.load(model, device="cpu", settings=Settings())

    env = {"RERANKER_MODEL": model}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("RERANKER_"):
            p.error(f"--env takes RERANKER_NAME=VALUE, not {item!r}")
        env[name] = value
    with LocalCogServer(env, concurrency=args.concurrency) as server:
        soak = Soak(server, reranker, args)
        print(f"# solo answers for {len(soak.want_valid) + len(soak.want_large)} specs", flush=True)
        with ThreadPoolExecutor(args.clients) as pool:  # warm-up at full concurrency
            warm = list(
                pool.map(
                    lambda i: soak.check("valid", soak.pool_valid, soak.want_valid, i),
                    range(min(args.clients, len(soak.pool_valid))),
                )
            )
        sampler = TreeSampler(server)
        time.sleep(2)
        start = sampler.sample()
        sampler.processes = start["processes"]  # fewer later: the worker died
        soak.dead = sampler.dead
        print(f"# start: {start['rss_mb']:.0f} MB, {start['fds']} fds, {start['threads']} threads")
        sampler.start()
        began = time.monotonic()
        outcomes = warm + soak.run()  # the warm-up answers are checked and counted too
        soak_seconds = time.monotonic() - began
        slots, idle = {"ok": False, "skipped": "server died"}, ("server died", 0.0)
        if not sampler.dead.is_set():
            slots = soak.slots_free(120)
            idle = server.wait_ready(120)
        soak.hooks.close()
        sampler.halt.set()
        sampler.join()
        final_check = "not run (server died)"
        if not sampler.dead.is_set():
            time.sleep(3)  # let worker threads settle before the idle sample
        end = sampler.sample()
        if not sampler.dead.is_set():
            i = len(soak.pool_valid) - 1
            o = soak.check("valid", soak.pool_valid, soak.want_valid, i)
            final_check = "equal to solo" if o.ok else f"DIFFERS: {o.detail}"
        died = sampler.dead.is_set()
        logs_tail = server.logs()[-3000:]

    r = summarize(args, soak, outcomes, sampler.samples, start, end, idle, final_check, died)
    r["slots_after"] = slots
    r["soak_seconds"] = round(soak_seconds, 1)
    r["passed"] = not (
        r["failures"]
        or died
        or idle[0] != "READY"
        or final_check != "equal to solo"
        or not slots["ok"]
        or r["resources"]["health_not_ok"]
    )
    if died:
        r["server_log_tail"] = logs_tail
    write(r, Path(args.out))
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
