"""Admission control: how much request data is tokenized and queued at once, over all callers.

Without it each request in flight holds, all at once, its tokenizer's working memory (about
30-150 bytes per character tokenized) and then its token ids (10-60 bytes per token as Python
ints) until it completes; at Cog's 16 concurrent requests of up to 50M characters and 4M tokens
each that is far more than an instance's RAM. Two first-in-first-out gates bound it:

* **characters** (``RERANKER_MAX_CHARS_IN_FLIGHT``): a request holds its distinct documents'
  characters (plus query and instruction) from the start of tokenization until its tokens are
  admitted, so tokenizer memory and tokens not yet admitted are bounded by it;
* **tokens** (``RERANKER_MAX_TOKENS_IN_FLIGHT``): a request holds its prompt tokens (what
  ``RERANKER_MAX_REQUEST_TOKENS`` counts) from then until it completes or fails.

Beyond a bound requests wait their turn in arrival order; one larger than a whole bound runs
alone. A request that waits longer than ``RERANKER_ADMISSION_TIMEOUT`` seconds in total fails
with :class:`AdmissionTimeout`. The request's strings themselves are not bounded here: they
exist before ``predict()`` runs (Cog's concurrency bounds them).

:class:`~reranker.gate.FifoGate` is the primitive: a weighted semaphore, FIFO, usable from any
event loop or thread; the scheduler's prefix room is one too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from ..config import Settings, env_name
from ..request.prepare import PreparedRequest, RerankRequest
from .gate import FifoGate


class AdmissionTimeout(TimeoutError):
    """A request waited longer than the waiting bound for room to run."""


@dataclass(frozen=True)
class Admitted:
    """A prepared request holding its share of the token bound, and what admission cost."""

    prepared: PreparedRequest
    wait_seconds: float  # waiting for room, both bounds together
    tokenize_seconds: float


def request_chars(request: RerankRequest) -> int:
    """Characters the tokenizer reads for ``request`` (each distinct document once)."""
    docs = set(request.documents)
    return len(request.query) + len(request.instruction) + sum(map(len, docs))


class Admission:
    """The two bounds of one reranker, shared by every caller of it (see the module doc)."""

    def __init__(self, max_chars: int, max_tokens: int, timeout: float | None) -> None:
        self.chars = FifoGate(max_chars)
        self.tokens = FifoGate(max_tokens)
        self.timeout = timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> Admission:
        return cls(
            settings.max_chars_in_flight,
            settings.max_tokens_in_flight,
            settings.admission_timeout,
        )

    @asynccontextmanager
    async def admit(
        self,
        requests: Sequence[RerankRequest],
        prepare: Callable[[RerankRequest], PreparedRequest],
    ) -> AsyncIterator[list[Admitted]]:
        """Wait for room, tokenize (in a thread), hold the tokens until the block exits.

        Several requests are admitted as one (the library's ``predict`` groups pairs by
        query): they wait once, for their characters and tokens together.
        """
        clock = _Clock(self.timeout)
        chars = sum(map(request_chars, requests))
        await clock.wait(self.chars, chars, "characters", "max_chars_in_flight")
        try:
            # The tokenizer's thread cannot be stopped: if the caller is cancelled meanwhile,
            # its characters stay held until the thread ends, so its memory stays counted.
            work = asyncio.ensure_future(asyncio.to_thread(_prepare_all, requests, prepare))
            try:
                prepared = await asyncio.shield(work)
            except asyncio.CancelledError:
                held, chars = chars, 0
                work.add_done_callback(lambda w: _finished(w, lambda: self.chars.release(held)))
                raise
            tokens = sum(p.num_tokens for p, _ in prepared)
            await clock.wait(self.tokens, tokens, "tokens", "max_tokens_in_flight")
        finally:
            self.chars.release(chars)
        try:
            yield [Admitted(p, clock.waited, seconds) for p, seconds in prepared]
        finally:
            self.tokens.release(tokens)


def _prepare_all(
    requests: Sequence[RerankRequest], prepare: Callable[[RerankRequest], PreparedRequest]
) -> list[tuple[PreparedRequest, float]]:
    """Each request prepared, with the seconds it took."""
    out = []
    for request in requests:
        started = time.perf_counter()
        out.append((prepare(request), time.perf_counter() - started))
    return out


def _finished(work: asyncio.Future, then: Callable[[], None]) -> None:
    if not work.cancelled():
        work.exception()  # retrieved: the cancelled caller no longer wants it
    then()


class _Clock:
    """One request's waits for room, together against the timeout (tokenizing not counted)."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.waited = 0.0

    def _left(self) -> float | None:
        return None if self.timeout is None else max(0.0, self.timeout - self.waited)

    async def wait(self, gate: FifoGate, weight: int, unit: str, field: str) -> None:
        started = time.perf_counter()
        try:
            await gate.acquire(weight, self._left())
        except TimeoutError:
            raise self._expired(gate, weight, unit, field) from None
        finally:
            self.waited += time.perf_counter() - started

    def _expired(self, gate: FifoGate, weight: int, unit: str, field: str) -> AdmissionTimeout:
        return AdmissionTimeout(
            f"the reranker is busy: this request waited {self.timeout:g} s "
            f"({env_name('admission_timeout')}) for room for its {weight:,} {unit} "
            f"({env_name(field)}={gate.capacity:,} in flight over all requests); retry later"
        )
