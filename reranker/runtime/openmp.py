"""Giving back the calling thread's OpenMP team, so the replica workers' teams run alone.

libgomp (the OpenMP runtime of torch's Linux wheels) keeps a team of threads, for good, per
thread that ran a parallel region. Once its threads outnumber the CPUs, every team spins only
briefly between parallel regions and then sleeps on a futex, so a pass on a replica worker pays
a wake-up per op while the caller's thread keeps a team of its own (its torch work, a model
card recipe run beside the reranker): on 2 CPU cores, rag-20 passes took 40 ms instead of 32 ms,
with 175 voluntary context switches per request instead of 3 (bench/latency.py, row "pass,
worker, caller keeps a team"). The caller's own torch work pays the same while a worker
keeps a team. So a blocking call gives the caller's team back before it waits, and an idle
worker gives back its own (OpenMP 5.0's ``omp_pause_resource_all``: libgomp frees the calling
thread's pool only); the next parallel region on that thread makes a new team, which costs
microseconds (a thread start per extra core).
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)
OMP_PAUSE_SOFT = 1


def release_team() -> None:
    """Free the calling thread's OpenMP team, if it has one; a no-op inside a parallel region
    or where no libgomp is loaded (macOS, another OpenMP runtime)."""
    for pause in _pause_functions():
        pause(OMP_PAUSE_SOFT)


@functools.cache
def _pause_functions() -> tuple[Callable[[int], int], ...]:
    """``omp_pause_resource_all`` of each libgomp this process has loaded."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libgomp" in line}
    except OSError:
        return ()
    found = []
    for path in sorted(paths):
        try:
            found.append(ctypes.CDLL(path).omp_pause_resource_all)
        except (OSError, AttributeError):  # an old libgomp without OpenMP 5.0
            log.debug("no omp_pause_resource_all in %s", path)
    return tuple(found)
