"""What a caller sees while a request runs: log lines (server) or a progress bar (library).

Both consume the scheduler's one progress event, ``(done, unique, stats)``, counted over the
request's distinct documents, and show it over the request's own document count.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .queued import RequestStats

LOG_INTERVAL_S = 1.0  # at most one progress line per second per request


def _shown(total: int, done: int, unique: int) -> int:
    return total if done == unique else total * done // unique


@dataclass
class ProgressLog:
    """Prints ``scored d/n documents`` lines for requests that take more than one pass."""

    say: Callable[[str], None]
    total: int
    started: float = field(default_factory=time.perf_counter)
    last: float = 0.0

    def __call__(self, done: int, unique: int, stats: RequestStats) -> None:
        now = time.perf_counter()
        if done < unique and now - self.last < LOG_INTERVAL_S:
            return
        if done == unique and stats.passes <= 1:
            return
        self.last = now
        rate = stats.tokens / max(now - self.started, 1e-9)
        self.say(
            f"scored {_shown(self.total, done, unique)}/{self.total} documents "
            f"({stats.passes} passes, {rate:,.0f} tokens/s)"
        )


class ProgressBar:
    """A tqdm bar on stderr: documents done of the total, and tokens per second."""

    def __init__(self, total: int) -> None:
        from tqdm.auto import tqdm

        self.total = total
        self.started = time.perf_counter()
        self.bar = tqdm(total=total, unit="doc", file=sys.stderr, dynamic_ncols=True)

    def __call__(self, done: int, unique: int, stats: RequestStats) -> None:
        rate = stats.tokens / max(time.perf_counter() - self.started, 1e-9)
        self.bar.n = _shown(self.total, done, unique)
        self.bar.set_postfix_str(f"{rate:,.0f} tokens/s", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
