"""Cross-request batching: documents of concurrent requests share forward passes.

Typical RAG traffic is many small requests; run one at a time they leave the GPU idle between
small passes. The scheduler keeps one queue of pending documents from every request in flight
and one worker thread per model replica (one per GPU). Each worker fills a pass up to its
token budget, taking documents round-robin from the waiting requests (so a 5,000-document
request cannot starve a 10-document one), runs it off the event loop, and hands every request
its own logits. A request's shared prompt prefix is computed once per replica that serves it.

Cancelling a request (its coroutine is cancelled) drops its documents that have not yet
started: they leave the queue at the next pass boundary, and other requests are unaffected.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from .batching import length_order
from .engine import Engine, Item
from .model import ContextKV
from .tokenization import EncodedRequest

log = logging.getLogger(__name__)


@dataclass
class RequestStats:
    """What one request cost; reported as Cog metrics."""

    documents: int = 0
    tokens: int = 0
    passes: int = 0
    model_seconds: float = 0.0
    rescored: int = 0  # documents re-scored with float32 activations after an overflow


@dataclass(eq=False)
class _Request:
    encoded: EncodedRequest  # of the unique documents
    batch_size: int
    reuse: list[bool]  # per document: continue the cached prefix
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    pending: deque[int]
    logits: list[float | None]
    remaining: int
    contexts: dict[int, ContextKV] = field(default_factory=dict)  # replica -> prefix KV
    cancelled: bool = False
    stats: RequestStats = field(default_factory=RequestStats)

    def item(self, doc: int, replica: int) -> Item:
        ids = self.encoded.documents[doc]
        if self.reuse[doc]:
            return Item(ids, self.contexts[replica])
        return Item(self.encoded.context + ids)

    def post(self, *event) -> None:
        """Hand an event to the request's coroutine (thread-safe)."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class Scheduler:
    """Runs the documents of many requests through shared passes on one or more replicas."""

    def __init__(self, engines: Sequence[Engine]) -> None:
        if not engines:
            raise ValueError("the scheduler needs at least one engine")
        self.engines = list(engines)
        self._cond = threading.Condition()
        self._waiting: deque[_Request] = deque()  # requests with documents not yet taken
        self._closed = False
        self._threads = [
            threading.Thread(
                target=self._work, args=(r,), name=f"reranker-replica-{r}", daemon=True
            )
            for r in range(len(self.engines))
        ]
        for t in self._threads:
            t.start()

    # -- caller side (event loop) ---------------------------------------------------------

    async def logits(
        self, encoded, *, batch_size: int, on_progress=None, on_cancel=None
    ) -> tuple[list[float], RequestStats]:
        """Logits of every document of ``encoded`` (input order) and what they cost.

        ``on_progress(done, total, stats)`` is called on the caller's event loop after each
        pass that included documents of this request; ``on_cancel(dropped, total)`` when the
        caller is cancelled, with the number of documents that left the queue unscored.
        """
        n = len(encoded.documents)
        req = _Request(
            encoded=encoded,
            batch_size=batch_size,
            reuse=self.engines[0].reuses_prefix(encoded),
            loop=asyncio.get_running_loop(),
            events=asyncio.Queue(),
            pending=deque(length_order([len(d) for d in encoded.documents], encoded.documents)),
            logits=[None] * n,
            remaining=n,
        )
        with self._cond:
            self._waiting.append(req)
            self._cond.notify_all()
        try:
            while True:
                kind, payload = await req.events.get()
                if kind == "error":
                    raise payload
                if on_progress is not None:
                    on_progress(n - req.remaining, n, req.stats)
                if kind == "done":
                    return list(req.logits), req.stats  # type: ignore[arg-type]
        except asyncio.CancelledError:
            dropped = self.cancel(req)
            if on_cancel is not None:
                on_cancel(dropped, n)
            raise
        except BaseException:
            self.cancel(req)
            raise

    def cancel(self, req: _Request) -> int:
        """Drop the request's documents that no pass has taken yet; returns how many."""
        with self._cond:
            dropped = len(req.pending)
            req.cancelled = True
            req.pending.clear()
            if req in self._waiting:
                self._waiting.remove(req)
            req.contexts.clear()
            return dropped

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def queued_documents(self) -> int:
        with self._cond:
            return sum(len(r.pending) for r in self._waiting)

    # -- worker side (one thread per replica) ---------------------------------------------

    def _work(self, replica: int) -> None:
        engine = self.engines[replica]
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                picks = self._take(engine.max_batch_tokens)
            try:
                self._run(engine, replica, picks)
            except BaseException as exc:  # never let a bad pass kill the worker thread
                log.exception("scheduler: unexpected failure on replica %d", replica)
                for req in {id(r): r for r, _ in picks}.values():
                    req.post("error", RuntimeError(f"internal error while scoring: {exc}"))

    def _take(self, budget: int) -> list[tuple[_Request, int]]:
        """Fill one pass round-robin from the waiting requests (called under the lock).

        The budget counts new tokens; a request's prefix counts too when it is not reused.
        A pass holds at most the smallest ``batch_size`` among the requests it serves.
        """
        picks: list[tuple[_Request, int]] = []
        tokens = 0
        cap = None
        for req in itertools.cycle(list(self._waiting)):
            if not self._waiting or (cap is not None and len(picks) >= cap):
                break
            if not req.pending:
                if req in self._waiting:
                    self._waiting.remove(req)
                continue
            doc = req.pending[0]
            n = len(req.encoded.documents[doc])
            if not req.reuse[doc]:
                n += len(req.encoded.context)
            if picks and tokens + n > budget:
                break
            req.pending.popleft()
            picks.append((req, doc))
            tokens += n
            cap = req.batch_size if cap is None else min(cap, req.batch_size)
            if not req.pending:
                self._waiting.remove(req)
        return picks

    def _run(self, engine: Engine, replica: int, picks: list[tuple[_Request, int]]) -> None:
        picks = [(r, d) for r, d in picks if not r.cancelled]
        if not picks:
            return
        requests = list({id(r): r for r, _ in picks}.values())
        started = time.perf_counter()
        missing = [
            r
            for r in requests
            if replica not in r.contexts and any(r.reuse[d] for q, d in picks if q is r)
        ]
        try:
            if missing:
                built = engine.contexts([r.encoded.context for r in missing])
                for r, ctx in zip(missing, built, strict=True):
                    r.contexts[replica] = ctx
            items = [r.item(d, replica) for r, d in picks]
            result = engine.run(items)
        except Exception as exc:
            if len(requests) > 1:  # attribute the failure: rerun each request's share alone
                for r in requests:
                    self._run(engine, replica, [(q, d) for q, d in picks if q is r])
                return
            requests[0].post("error", exc)
            return
        elapsed = time.perf_counter() - started
        done: dict[int, list[int]] = {}
        for (r, d), value, item in zip(picks, result.logits, items, strict=True):
            r.logits[d] = value
            r.stats.tokens += item.num_tokens
            done.setdefault(id(r), []).append(d)
        for i in result.rescored:
            picks[i][0].stats.rescored += 1
        for r in requests:
            docs = done[id(r)]
            r.remaining -= len(docs)
            r.stats.documents += len(docs)
            r.stats.passes += 1
            r.stats.model_seconds += elapsed
            try:
                engine.scorer.check_finite([r.logits[d] for d in docs])
            except Exception as exc:
                self.cancel(r)
                r.post("error", exc)
                continue
            if r.remaining == 0:
                r.contexts.clear()
                r.post("done", None)
            else:
                r.post("progress", None)
