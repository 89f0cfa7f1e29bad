"""What the scheduler keeps per request: its documents not yet taken, its cached prefixes per
replica, the logits so far and what it cost. The queue itself is the scheduler's."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..model.engine import Item
from ..model.scorer import ContextKV
from ..text.tokenization import EncodedRequest
from .gate import Ticket


@dataclass
class RequestStats:
    """What one request cost so far; reported as progress and as Cog metrics."""

    documents: int = 0  # distinct documents scored
    tokens: int = 0  # prompt tokens scored (context included)
    passes: int = 0
    model_seconds: float = 0.0
    rescored: int = 0  # documents re-scored with float32 activations after an overflow

    def add(self, other: RequestStats) -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)


# on_progress(done, total, stats): after each pass that scored documents of the request.
OnProgress = Callable[[int, int, RequestStats], None]
# on_cancel(dropped, total): documents that left the queue unscored when the caller cancelled.
OnCancel = Callable[[int, int], None]


@dataclass(eq=False)
class QueuedRequest:
    """One request's documents in the queue. ``item`` and ``cost`` are the only places that
    say what a document runs as and what it costs a pass."""

    encoded: EncodedRequest  # of the unique documents
    batch_size: int
    reuse: list[bool]  # per document: continue the cached prefix
    post: Callable[[tuple], None]  # hands an event to the waiting caller (thread-safe)
    pending: deque[int]
    logits: list[float | None]
    remaining: int
    contexts: dict[int, ContextKV] = field(default_factory=dict)  # replica -> prefix KV
    room: dict[int, Ticket] = field(default_factory=dict)  # replica -> its prefix room
    used: set[int] = field(default_factory=set)  # replicas that took documents of it
    cancelled: bool = False
    stats: RequestStats = field(default_factory=RequestStats)

    def item(self, doc: int, replica: int) -> Item:
        ids = self.encoded.documents[doc]
        if self.reuse[doc]:
            return Item(ids, self.contexts[replica])
        return Item(self.encoded.context + ids)

    def cost(self, doc: int) -> int:
        """New tokens the document adds to a pass (its prefix too when not reused)."""
        n = len(self.encoded.documents[doc])
        return n if self.reuse[doc] else n + len(self.encoded.context)

    def record(
        self, docs: list[int], values: list[float], tokens: int, rescored: int, seconds: float
    ) -> bool:
        """Take the logits of ``docs`` from one pass and count what it cost (under the
        scheduler's lock); False if any is not finite."""
        for doc, value in zip(docs, values, strict=True):
            self.logits[doc] = value
        self.remaining -= len(docs)
        self.stats.documents += len(docs)
        self.stats.tokens += tokens
        self.stats.rescored += rescored
        self.stats.passes += 1
        self.stats.model_seconds += seconds
        return all(math.isfinite(v) for v in values)


# A filled pass: (request, document index) in the order the pass runs them.
Picks = list[tuple[QueuedRequest, int]]


def requests_of(picks: Picks) -> list[QueuedRequest]:
    """The distinct requests a pass serves, in order of first appearance."""
    return list({id(r): r for r, _ in picks}.values())


def progress(reqs: Sequence[QueuedRequest], done: Sequence[int]) -> tuple[int, int, RequestStats]:
    """The arguments of ``on_progress`` over ``reqs``. ``done`` is counted when each event was
    posted, not when it is handled: the workers run ahead of the caller, and a count read at
    handling time would show the last pass's total on an earlier pass's event."""
    total = sum(len(r.logits) for r in reqs)
    if len(reqs) == 1:
        return done[0], total, reqs[0].stats
    stats = RequestStats()
    for r in reqs:
        stats.add(r.stats)
    return sum(done), total, stats
