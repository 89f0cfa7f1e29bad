"""The one capacity rule: a weighted FIFO gate ("empty, or the new weight fits").

Admission's two in-flight bounds (:mod:`reranker.runtime.admission`) and each replica's
cached-prefix room (:mod:`reranker.runtime.scheduler`) are gates. Usable from any event loop
or thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass(eq=False)
class Ticket:
    """A place in a :class:`FifoGate`'s line: ``granted`` once its units are held."""

    weight: int
    wake: Callable[[], bool] | None = None  # called on grant; False: nobody is left to wake
    granted: bool = False


class FifoGate:
    """A weighted semaphore that grants in arrival order, from any event loop or thread.

    ``weight`` units are granted when they fit under ``capacity``, or when nothing at all is
    held (so a request larger than the whole capacity runs alone and never deadlocks). A
    waiter never overtakes an earlier one, even when it would fit: large requests are not
    starved by a stream of small ones. The one capacity rule of the package: admission's two
    bounds and each replica's cached-prefix room are gates.

    :meth:`enter` is the non-blocking form (the scheduler's pass filler takes a ticket and
    checks ``granted`` on each pass); :meth:`acquire` waits on an event loop.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._in_use = 0
        self._waiters: deque[Ticket] = deque()
        self.peak = 0  # most units ever held at once (a request over capacity can exceed it)

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._in_use

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiters)

    def enter(self, weight: int, wake: Callable[[], bool] | None = None) -> Ticket:
        """Join the line without waiting: the ticket is granted at once when nobody waits and
        ``weight`` fits, else later, in arrival order (``wake`` is called then). Give it back
        with :meth:`leave`."""
        if weight < 0:
            raise ValueError(f"weight must not be negative, got {weight}")
        ticket = Ticket(weight, wake)
        with self._lock:
            if not self._waiters and self._fits(weight):
                self._take(ticket)
            else:
                self._waiters.append(ticket)
        return ticket

    def leave(self, ticket: Ticket) -> None:
        """Give back what ``ticket`` holds, or leave the line (which may let the next in)."""
        with self._lock:
            if ticket.granted:
                ticket.granted = False
                self._in_use -= ticket.weight
            elif ticket in self._waiters:
                self._waiters.remove(ticket)
            self._grant()

    async def acquire(self, weight: int, timeout: float | None = None) -> None:
        """Wait for ``weight`` units; ``TimeoutError`` after ``timeout`` seconds of waiting.

        Cancelled or timed out while waiting, the caller leaves the line holding nothing.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def wake() -> bool:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # the loop is closed
                return False
            return True

        ticket = self.enter(weight, wake)
        if ticket.granted:
            return
        try:
            async with asyncio.timeout(timeout):
                await future
        except BaseException:
            self.leave(ticket)  # granted just as it gave up: the units are handed on
            raise

    def release(self, weight: int) -> None:
        """Give back ``weight`` units taken by :meth:`acquire`."""
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

    def _take(self, ticket: Ticket) -> None:
        ticket.granted = True
        self._in_use += ticket.weight
        self.peak = max(self.peak, self._in_use)

    def _grant(self) -> None:
        while self._waiters and self._fits(self._waiters[0].weight):
            ticket = self._waiters.popleft()
            self._take(ticket)
            if ticket.wake is not None and not ticket.wake():
                ticket.granted = False
                self._in_use -= ticket.weight


def _resolve(future: asyncio.Future) -> None:
    if not future.done():  # a cancelled waiter's future is done already
        future.set_result(None)
