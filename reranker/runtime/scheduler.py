"""The one road from a tokenized request to logits: documents of every caller share passes.

Every caller comes through here: the library's ``Reranker.score/rank``, the CLI and the Cog
server all await :meth:`Scheduler.logits`. One queue holds the pending documents of every
request in flight. A pass is filled round-robin from the waiting requests (so a
5,000-document request cannot starve a 10-document one) under the replica's token budget
(:class:`~reranker.batching.PassFill`), and each request gets its own logits back, in input
order. A request's shared prompt prefix is computed once per
replica that serves it, and its keys and values stay on that replica's device until the
request ends. Those are the only device memory that grows with the number of requests, so
each replica holds at most ``Engine.max_prefix_tokens`` of them: a request whose prefix does
not fit waits (arrival order, no overtaking) until earlier requests end; one larger than the
whole bound runs when the replica holds none.

This module is the queue and the pass filling. Passes run only on the replicas' worker threads
(:mod:`reranker.runtime.workers`), started on the first request and stopped by
:meth:`Scheduler.close` (or at interpreter exit); running a filled pass and charging a failure
to its request is :mod:`reranker.runtime.passes`; per-request state is
:mod:`reranker.runtime.queued`. Callers submit and await their
logits (:meth:`Scheduler.logits`); the library's blocking calls are the same coroutine run on
a loop thread (:mod:`reranker.runtime.loop`). A replica's cached-prefix room is a
:class:`~reranker.gate.FifoGate`, the same rule admission applies to requests.

Cancelling a request (its coroutine is cancelled, or a blocking caller is interrupted) drops
its documents that have not yet started: they leave the queue at the next pass boundary, and
other requests are unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Literal

from ..model.batching import PassFill, length_order
from ..model.engine import Engine
from ..model.scorer import NonFiniteError
from ..text.tokenization import EncodedRequest
from . import passes, workers
from .gate import FifoGate
from .openmp import release_team
from .passes import PassObserver
from .queued import (
    OnCancel,
    OnProgress,
    Picks,
    QueuedRequest,
    RequestStats,
    progress,
    requests_of,
)

__all__ = ["OnCancel", "OnProgress", "PassObserver", "RequestStats", "Scheduler"]

log = logging.getLogger(__name__)


class Scheduler:
    """Runs the documents of many requests through shared passes on one or more replicas."""

    def __init__(self, engines: Sequence[Engine]) -> None:
        if not engines:
            raise ValueError("the scheduler needs at least one engine")
        self.engines = list(engines)
        self._cond = threading.Condition()
        self._waiting: deque[QueuedRequest] = deque()  # requests with documents not yet taken
        # per replica: the cached prefixes it may hold (first come, first served)
        self._rooms = [FifoGate(e.max_prefix_tokens) for e in self.engines]
        self._threads: list[threading.Thread] = []
        self._closed = False
        # called on the worker thread after each pass (``/metrics`` times passes here)
        self.pass_observers: list[PassObserver] = []
        self._changes = 0  # bumped whenever work or room appears; idle workers wait for it

    # -- callers ---------------------------------------------------------------------------

    async def logits(
        self,
        encoded: EncodedRequest,
        *,
        batch_size: int,
        on_progress: OnProgress | None = None,
        on_cancel: OnCancel | None = None,
    ) -> tuple[list[float], RequestStats]:
        """Logits of every document of ``encoded`` (input order) and what they cost.

        ``on_progress`` and ``on_cancel`` run on the caller's event loop.
        """
        (result,) = await self.logits_many(
            [encoded], batch_size=batch_size, on_progress=on_progress, on_cancel=on_cancel
        )
        return result

    async def logits_many(
        self,
        encoded: Sequence[EncodedRequest],
        *,
        batch_size: int,
        on_progress: OnProgress | None = None,
        on_cancel: OnCancel | None = None,
    ) -> list[tuple[list[float], RequestStats]]:
        """Several requests at once, sharing passes; progress is counted over all of them."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def poster(i: int) -> Callable[[tuple], None]:
            def post(event: tuple) -> None:
                with contextlib.suppress(RuntimeError):  # the caller's loop is closed
                    loop.call_soon_threadsafe(events.put_nowait, (i, event))

            return post

        reqs: list[QueuedRequest] = []
        try:
            for i, e in enumerate(encoded):
                reqs.append(self._submit(e, batch_size, poster(i)))
            done = [0] * len(reqs)  # per request, as of the last event handled
            unfinished = len(reqs)
            while unfinished:
                i, (kind, payload) = await events.get()
                if kind == "error":
                    raise payload
                unfinished -= kind == "done"
                done[i] = payload
                if on_progress is not None:
                    on_progress(*progress(reqs, done))
            return [(list(r.logits), r.stats) for r in reqs]  # type: ignore[misc]
        except asyncio.CancelledError:
            dropped = sum(self.cancel(r) for r in reqs)
            if on_cancel is not None:
                on_cancel(dropped, sum(len(r.logits) for r in reqs))
            raise
        except BaseException:
            for r in reqs:
                self.cancel(r)
            raise

    def cancel(self, req: QueuedRequest) -> int:
        """Drop the request's documents that no pass has taken yet; returns how many."""
        with self._cond:
            dropped = len(req.pending)
            req.cancelled = True
            req.pending.clear()
            if req in self._waiting:
                self._waiting.remove(req)
            self._release_prefix(req)
            self._changed()  # a request waiting for room may no longer wait behind this one
            return dropped

    def prefix_held(self, replica: int) -> int:
        """Cached prefix tokens ``replica`` holds room for now."""
        return self._rooms[replica].in_use

    @property
    def prefix_peak(self) -> list[int]:
        """Per replica: the most cached prefix tokens it ever held room for."""
        return [room.peak for room in self._rooms]

    def close(self, timeout: float = 60.0) -> None:
        """Stop the worker threads after their current pass and wait for them (up to
        ``timeout`` seconds each, so that none is still inside torch when the interpreter
        exits); requests with documents still queued fail with a clear error rather than
        wait for passes that will never run."""
        with self._cond:
            self._closed = True
            waiting = list(self._waiting)
            threads, self._threads = self._threads, []
            self._cond.notify_all()
        for req in waiting:
            self.cancel(req)
            req.post(("error", RuntimeError("the reranker is shut down")))
        for t in threads:
            if t is not threading.current_thread():
                t.join(timeout)

    @property
    def workers(self) -> list[threading.Thread]:
        """The replicas' worker threads (none before the first request or after close)."""
        with self._cond:
            return list(self._threads)

    @property
    def queued_documents(self) -> int:
        with self._cond:
            return sum(len(r.pending) for r in self._waiting)

    def _submit(
        self, encoded: EncodedRequest, batch_size: int, post: Callable[[tuple], None]
    ) -> QueuedRequest:
        n = len(encoded.documents)
        req = QueuedRequest(
            encoded=encoded,
            batch_size=batch_size,
            reuse=self.engines[0].reuses_prefix(encoded),
            post=post,
            pending=deque(length_order([len(d) for d in encoded.documents], encoded.documents)),
            logits=[None] * n,
            remaining=n,
        )
        with self._cond:
            if self._closed:
                raise RuntimeError("the reranker is shut down")
            if not self._threads:
                self._threads = workers.start(self, self._serve, len(self.engines))
            self._waiting.append(req)
            self._changed()
        return req

    # -- the worker threads ----------------------------------------------------------------

    def _serve(self, replica: int) -> bool:
        """Wait for work and run one pass on ``replica``; False once the scheduler is closed.

        An idle worker first gives back its OpenMP team (:mod:`reranker.runtime.openmp`), so
        the process's other torch work runs alone between requests."""
        with self._cond:
            idle = not self._waiting and not self._closed
        if idle:
            release_team()
        with self._cond:
            if not self._waiting and not self._closed:
                self._cond.wait(workers.IDLE_WAKE_S)
            if self._closed:
                return False
            if not self._waiting:
                return True
            seen = self._changes
        if self._step(replica) == "room":  # everything waiting waits for prefix room
            # woken when room is given back or a request leaves the queue; the timeout is a
            # safety net for any other way a waiting request could start to fit
            with self._cond:
                if self._changes == seen and not self._closed:
                    self._cond.wait(1.0)
        return True

    def _changed(self) -> None:
        """Work or prefix room appeared (called under the lock)."""
        self._changes += 1
        self._cond.notify_all()

    def _step(self, replica: int) -> Literal["ran", "idle", "room"]:
        """Fill one pass from the queue and run it on ``replica``. Without a pass: "idle" if
        nothing waits, "room" if everything waiting waits for prefix room there."""
        engine = self.engines[replica]
        with self._cond:
            picks = self._take(replica)
            if not picks:
                return "room" if self._waiting else "idle"
        try:
            self._run(engine, replica, picks)
        except BaseException as exc:  # a bug or an interrupt: answer every request in it
            log.exception("scheduler: unexpected failure on replica %d", replica)
            for req in requests_of(picks):
                req.post(("error", RuntimeError(f"internal error while scoring: {exc}")))
            if not isinstance(exc, Exception):
                raise
        return "ran"

    def _take(self, replica: int) -> Picks:
        """Fill one pass for ``replica`` round-robin from the waiting requests (called under
        the lock).

        A pass holds at most the smallest ``batch_size`` among the requests it serves. A
        request whose next document continues its cached prefix takes its turn only once the
        replica's room gate has granted it room (arrival order, no overtaking).
        """
        picks: Picks = []
        fill = PassFill(self.engines[replica].max_batch_tokens, 1 << 30)
        turns = deque(self._waiting)
        while turns:
            req = turns.popleft()
            doc = req.pending[0]
            if req.reuse[doc] and not self._room(req, replica):
                continue  # in the room gate's line until earlier requests give room back
            if not fill.admits(req.cost(doc)):
                break
            req.pending.popleft()
            req.used.add(replica)
            picks.append((req, doc))
            fill.add(req.cost(doc))
            fill.max_items = min(fill.max_items, req.batch_size)
            if req.pending:
                turns.append(req)
            else:
                self._leave_queue(req)
        return picks

    def _room(self, req: QueuedRequest, replica: int) -> bool:
        """Whether ``replica`` holds room for ``req``'s prefix (its ticket, taken the first
        time it asks, is granted: the gate's rule, "empty or it fits", in arrival order)."""
        ticket = req.room.get(replica)
        if ticket is None:
            ticket = req.room[replica] = self._rooms[replica].enter(len(req.encoded.context))
        return ticket.granted

    def _leave_queue(self, req: QueuedRequest) -> None:
        """All of ``req``'s documents are taken (under the lock): room it holds or waits for
        on replicas that took none of them goes back, and idle replicas wake, since requests
        behind it may fit now."""
        self._waiting.remove(req)
        for replica in [r for r in req.room if r not in req.used]:
            self._rooms[replica].leave(req.room.pop(replica))
        self._changed()

    def _release_prefix(self, req: QueuedRequest) -> None:
        """Drop the request's cached prefixes and give back their room (under the lock)."""
        req.contexts.clear()
        for replica, ticket in req.room.items():
            self._rooms[replica].leave(ticket)
        if req.room:
            req.room.clear()
            self._changed()

    def _run(self, engine: Engine, replica: int, picks: Picks) -> None:
        for share in passes.run(engine, replica, picks, self.pass_observers):
            if isinstance(share, passes.Failed):
                req = share.picks[0][0]
                self.cancel(req)
                req.post(("error", share.error))
            else:
                self._record(engine, share)

    def _record(self, engine: Engine, ran: passes.Ran) -> None:
        """Hand each request its logits from the pass, and finish those it completes. Under
        the lock: a request served by several replicas at once is counted (and finished)
        exactly once."""
        shares: dict[int, tuple[QueuedRequest, list[int], list[float], list[int]]] = {}
        for (r, d), value, item in zip(ran.picks, ran.result.logits, ran.items, strict=True):
            _, docs, values, tokens = shares.setdefault(id(r), (r, [], [], []))
            docs.append(d)
            values.append(value)
            tokens.append(item.num_tokens)
        rescored = Counter(id(ran.picks[i][0]) for i in ran.result.rescored)
        events = []
        with self._cond:
            for key, (r, docs, values, tokens) in shares.items():
                if r.cancelled:  # cancelled during the pass: its room is already given back
                    r.contexts.clear()
                finite = r.record(docs, values, sum(tokens), rescored[key], ran.seconds)
                if not finite:
                    self.cancel(r)
                    events.append((r, ("error", non_finite_error(engine))))
                elif r.remaining == 0:
                    self._release_prefix(r)
                    events.append((r, ("done", len(r.logits))))
                else:
                    events.append((r, ("progress", len(r.logits) - r.remaining)))
        for r, event in events:
            r.post(event)


def non_finite_error(engine: Engine) -> NonFiniteError:
    dtype = str(engine.scorer.dtype).removeprefix("torch.")
    also = " even with float32 activations" if engine.scorer.can_rescore else ""
    return NonFiniteError(
        f"the model produced non-finite values in {dtype}{also} (numeric overflow); "
        "load it in bfloat16 or float32"
    )
