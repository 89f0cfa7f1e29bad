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

:class:`FifoGate` is the primitive: a weighted semaphore, FIFO, usable from any event loop or
thread (the service's loop, ``asyncio.run`` in a library caller, blocking callers).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

from .config import Settings, env_name
from .request import PreparedRequest, RerankRequest


class AdmissionTimeout(TimeoutError):
    """A request waited longer than the waiting bound for room to run."""


@dataclass(eq=False)
class _Waiter:
    weight: int
    wake: Callable[[], bool]  # False: nobody is left to wake (its event loop is closed)
    granted: bool = False


class FifoGate:
    """A weighted semaphore that admits in arrival order, from any event loop or thread.

    ``weight`` units are granted when they fit under ``capacity``, or when nothing at all is
    held (so a request larger than the whole capacity runs alone and never deadlocks). A
    waiter never overtakes an earlier one, even when it would fit: large requests are not
    starved by a stream of small ones.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._in_use = 0
        self._waiters: deque[_Waiter] = deque()
        self.peak = 0  # most units ever held at once (a request over capacity can exceed it)

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._in_use

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiters)

    async def acquire(self, weight: int, timeout: float | None = None) -> None:
        """Wait for ``weight`` units; ``TimeoutError`` after ``timeout`` seconds of waiting.

        Cancelled or timed out while waiting, the caller leaves the queue holding nothing.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def wake() -> bool:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # the loop is closed
                return False
            return True

        waiter = self._enqueue(weight, wake)
        if waiter is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await future
        except BaseException:
            self._abandon(waiter)
            raise

    def acquire_blocking(self, weight: int, timeout: float | None = None) -> None:
        """:meth:`acquire` for a thread without an event loop."""
        event = threading.Event()

        def wake() -> bool:
            event.set()
            return True

        waiter = self._enqueue(weight, wake)
        if waiter is None:
            return
        try:
            if not event.wait(timeout):
                raise TimeoutError
        except BaseException:
            self._abandon(waiter)
            raise

    def release(self, weight: int) -> None:
        with self._lock:
            if weight > self._in_use:
                raise RuntimeError(f"released {weight} units but only {self._in_use} are held")
            self._in_use -= weight
            self._grant()

    @asynccontextmanager
    async def hold(self, weight: int, timeout: float | None = None) -> AsyncIterator[None]:
        await self.acquire(weight, timeout)
        try:
            yield
        finally:
            self.release(weight)

    # -- under the lock ---------------------------------------------------------------------

    def _fits(self, weight: int) -> bool:
        return self._in_use == 0 or self._in_use + weight <= self.capacity

    def _take(self, weight: int) -> None:
        self._in_use += weight
        self.peak = max(self.peak, self._in_use)

    def _enqueue(self, weight: int, wake: Callable[[], bool]) -> _Waiter | None:
        """Take ``weight`` at once (None) when nobody waits and it fits, else queue a waiter."""
        if weight < 0:
            raise ValueError(f"weight must not be negative, got {weight}")
        with self._lock:
            if not self._waiters and self._fits(weight):
                self._take(weight)
                return None
            waiter = _Waiter(weight, wake)
            self._waiters.append(waiter)
            return waiter

    def _abandon(self, waiter: _Waiter) -> None:
        """The waiter gave up (cancelled, timed out): give back what it was granted, if
        anything, or leave the queue (which may let the next one in)."""
        with self._lock:
            if waiter.granted:  # granted just as it gave up: hand the units on
                self._in_use -= waiter.weight
            else:
                self._waiters.remove(waiter)
            self._grant()

    def _grant(self) -> None:
        while self._waiters and self._fits(self._waiters[0].weight):
            waiter = self._waiters.popleft()
            self._take(waiter.weight)
            waiter.granted = True
            if not waiter.wake():
                self._in_use -= waiter.weight


def _resolve(future: asyncio.Future) -> None:
    if not future.done():  # a cancelled waiter's future is done already
        future.set_result(None)


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
        self, request: RerankRequest, prepare: Callable[[RerankRequest], PreparedRequest]
    ) -> AsyncIterator[Admitted]:
        """Wait for room, tokenize (in a thread), hold the tokens until the block exits."""
        clock = _Clock(self.timeout)
        chars = request_chars(request)
        await clock.wait(self.chars, chars, "characters", "max_chars_in_flight")
        try:
            # The tokenizer's thread cannot be stopped: if the caller is cancelled meanwhile,
            # its characters stay held until the thread ends, so its memory stays counted.
            work = asyncio.ensure_future(asyncio.to_thread(prepare, request))
            try:
                started = time.perf_counter()
                prepared = await asyncio.shield(work)
                tokenize_seconds = time.perf_counter() - started
            except asyncio.CancelledError:
                held, chars = chars, 0
                work.add_done_callback(lambda w: _finished(w, lambda: self.chars.release(held)))
                raise
            tokens = prepared.num_tokens
            await clock.wait(self.tokens, tokens, "tokens", "max_tokens_in_flight")
        finally:
            self.chars.release(chars)
        try:
            yield Admitted(prepared, clock.waited, tokenize_seconds)
        finally:
            self.tokens.release(tokens)

    @contextmanager
    def admit_blocking(
        self,
        requests: Sequence[RerankRequest],
        prepare: Callable[[RerankRequest], PreparedRequest],
    ) -> Iterator[list[Admitted]]:
        """:meth:`admit` for a blocking caller, for several requests admitted as one (they
        wait once, for their characters and tokens together); tokenizes in the caller's
        thread."""
        clock = _Clock(self.timeout)
        chars = sum(map(request_chars, requests))
        clock.wait_blocking(self.chars, chars, "characters", "max_chars_in_flight")
        try:
            prepared: list[tuple[PreparedRequest, float]] = []
            for request in requests:
                started = time.perf_counter()
                prepared.append((prepare(request), time.perf_counter() - started))
            tokens = sum(p.num_tokens for p, _ in prepared)
            clock.wait_blocking(self.tokens, tokens, "tokens", "max_tokens_in_flight")
        finally:
            self.chars.release(chars)
        try:
            yield [Admitted(p, clock.waited, seconds) for p, seconds in prepared]
        finally:
            self.tokens.release(tokens)


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

    def wait_blocking(self, gate: FifoGate, weight: int, unit: str, field: str) -> None:
        started = time.perf_counter()
        try:
            gate.acquire_blocking(weight, self._left())
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
