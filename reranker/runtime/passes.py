"""Running one filled pass on a replica, and charging a failure to the request that caused it.

The scheduler fills a pass (:mod:`reranker.runtime.scheduler`); this module builds the cached
prefixes the replica lacks, runs the pass, tells the pass observers (``/metrics``) what it
cost, and, when a pass shared by several requests fails, reruns each request's share alone,
so one request's bad input or overflow fails that request only.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..model.engine import Engine, Item, PassResult
from .queued import Picks, requests_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassRecord:
    """What one pass cost, as pass observers see it (called on the worker thread)."""

    replica: int
    documents: int
    tokens: int
    seconds: float


PassObserver = Callable[[PassRecord], None]


@dataclass(frozen=True)
class Ran:
    """A share of the pass that ran: its items and their results."""

    picks: Picks
    items: list[Item]
    result: PassResult
    seconds: float


@dataclass(frozen=True)
class Failed:
    """A share of the pass, all of one request, that failed."""

    picks: Picks
    error: Exception


def run(
    engine: Engine, replica: int, picks: Picks, observers: list[PassObserver]
) -> Iterator[Ran | Failed]:
    """Run ``picks`` (those of cancelled requests left out) as one pass; on a failure shared by
    several requests, each request's share alone."""
    picks = [(r, d) for r, d in picks if not r.cancelled]
    if not picks:
        return
    requests = requests_of(picks)
    started = time.perf_counter()
    try:
        items, result = _pass(engine, replica, picks)
    except Exception as exc:
        # The traceback's finished frames hold the pass's tensors (cached prefixes included)
        # for as long as the caller keeps the exception: let them go now, as the room they
        # took is given back when the request fails.
        traceback.clear_frames(exc.__traceback__)
        if len(requests) == 1:
            yield Failed(picks, exc)
            return
        for r in requests:
            yield from run(engine, replica, [(q, d) for q, d in picks if q is r], observers)
        return
    seconds = time.perf_counter() - started
    record = PassRecord(replica, len(items), sum(i.num_tokens for i in items), seconds)
    for observe in observers:
        try:
            observe(record)
        except Exception:  # a metrics bug must not fail the requests the pass served
            log.exception("pass observer %r failed", observe)
    yield Ran(picks, items, result, seconds)


def _pass(engine: Engine, replica: int, picks: Picks) -> tuple[list[Item], PassResult]:
    """Build the prefixes this replica lacks for ``picks``, then run the pass."""
    missing = [
        r
        for r in requests_of(picks)
        if replica not in r.contexts and any(r.reuse[d] for q, d in picks if q is r)
    ]
    if missing:
        built = engine.contexts([r.encoded.context for r in missing])
        for r, ctx in zip(missing, built, strict=True):
            r.contexts[replica] = ctx
    items = [r.item(d, replica) for r, d in picks]
    return items, engine.run(items)
