"""Blocking calls are the async core run on a loop thread (infinity's sync engine does the same).

The library's ``score``/``rank``/``predict`` and the CLI submit their coroutine to one event
loop running in a daemon thread and wait for it, so every caller takes the same road as the
server: admission, then the scheduler's workers, awaited. The loop thread only waits; passes
run on the scheduler's workers and tokenizing on the loop's executor.

Callbacks the caller gives (a progress bar) run in the caller's own thread, never on the loop:
an exception raised there (``KeyboardInterrupt``) must reach the caller, not stop the loop. An
interrupted caller cancels its coroutine and waits for it to unwind, so its queued documents
have left the queue when the exception reaches the caller.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .openmp import release_team

T = TypeVar("T")
# Seconds an interrupted caller waits for its coroutine to unwind (it only gives back room
# and drops queued documents, which takes milliseconds).
UNWIND_S = 10.0

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def run(
    make: Callable[[Callable[..., None] | None], Coroutine[Any, Any, T]],
    on_event: Callable[..., None] | None = None,
) -> T:
    """Run ``make(post)`` on the loop thread and return its result, in the caller's thread.

    ``post(*args)`` may be called on the loop; each call runs ``on_event(*args)`` here, in
    order, before the result is returned (``post`` is None when ``on_event`` is). An
    exception in ``on_event`` or an interrupt cancels the coroutine (and waits for it to
    unwind) before it propagates.
    """
    loop = _running_loop()
    events: queue.SimpleQueue = queue.SimpleQueue()
    outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
    tasks: list[asyncio.Task] = []

    def start() -> None:
        post = None if on_event is None else lambda *args: events.put(args)
        task = loop.create_task(make(post))
        tasks.append(task)
        task.add_done_callback(lambda t: _settle(t, outcome, events))

    loop.call_soon_threadsafe(start)
    release_team()  # the caller's OpenMP team would slow the workers' passes while it waits
    try:
        while (args := events.get()) is not None:
            on_event(*args)  # type: ignore[misc]
        return outcome.result()
    except BaseException:
        # call_soon_threadsafe keeps order: start() has run before this cancel does
        loop.call_soon_threadsafe(lambda: tasks[0].cancel())
        concurrent.futures.wait([outcome], timeout=UNWIND_S)
        raise


def _settle(
    task: asyncio.Task, outcome: concurrent.futures.Future, events: queue.SimpleQueue
) -> None:
    if task.cancelled():
        outcome.cancel()
    elif (exc := task.exception()) is not None:
        outcome.set_exception(exc)
    else:
        outcome.set_result(task.result())
    events.put(None)


def _running_loop() -> asyncio.AbstractEventLoop:
    """The loop thread, started on first use and stopped at interpreter exit."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="reranker-loop", daemon=True)
            thread.start()
            atexit.register(_stop, loop, thread)
            _loop = loop
        return _loop


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(UNWIND_S)
