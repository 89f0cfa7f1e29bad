"""The replica worker threads: the only threads that run passes.

One daemon thread per replica, started with the first request. A worker holds its owner (the
scheduler) only weakly between waits, so an owner nobody closes is still collected (its
workers then end), and owners still open at interpreter exit are closed then, after their
current pass, so that no worker is inside torch when the interpreter goes away.
"""

from __future__ import annotations

import atexit
import functools
import threading
import weakref
from collections.abc import Callable
from typing import Protocol

# Seconds an idle worker waits before looking again whether its owner still exists.
IDLE_WAKE_S = 5.0


class Owner(Protocol):
    def close(self, timeout: float = ...) -> None: ...


_open: weakref.WeakSet = weakref.WeakSet()  # owners whose workers run


def start(owner: Owner, serve: Callable[[int], bool], replicas: int) -> list[threading.Thread]:
    """Start one worker per replica calling ``serve(replica)`` (a bound method of ``owner``)
    until it returns False or ``owner`` is collected."""
    ref = weakref.WeakMethod(serve)  # type: ignore[arg-type]
    threads = [
        threading.Thread(target=_work, args=(ref, r), name=f"reranker-replica-{r}", daemon=True)
        for r in range(replicas)
    ]
    for t in threads:
        t.start()
    _open.add(owner)
    _close_at_exit()
    return threads


def _work(ref: weakref.WeakMethod, replica: int) -> None:
    while True:
        serve = ref()
        if serve is None or not serve(replica):
            return
        del serve


@functools.cache
def _close_at_exit() -> None:
    atexit.register(lambda: [owner.close(timeout=10.0) for owner in list(_open)])
