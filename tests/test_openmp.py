"""Passes on the replica worker cost what they would on the thread that loaded the model.

libgomp keeps an OpenMP team (its own OS threads) per thread that ran a parallel region; an
idle team spins, then sleeps on a futex. ``Reranker.load`` loads on a thread that ends
(``in_passing_thread`` in reranker/loading/loader.py), so the worker's team is the only one
left: had the caller's thread kept one, the two would wake each other on every op (on 2 CPU
cores, rag-20 passes 44.9 ms instead of 37.7 ms, 175 voluntary context switches per request
instead of 3: bench/results/latency-cpu-2026-12-07.txt). Shown here without a clock: after
loading and ranking, the caller's first parallel region (one matmul) still has to make its
team, so the process gains threads.

A caller that runs torch work of its own (a model card recipe beside the reranker) makes a
team anyway; a blocking call gives it back before it waits (``runtime/openmp.py``,
``release_team`` in ``runtime/loop.run``), so the worker's team again runs alone (bench/latency.py
row "pass, worker, caller keeps a team": 40 ms, 175 switches per request; after the release
32 ms, 3, as on a caller with no team).

Faults seen failing (2026-12-07): ``from_placement`` loading on the caller's thread (no
``in_passing_thread``): the matmul adds no thread; no ``release_team`` in ``loop.run``: the
caller's team outlives its rank() call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.subprocess

# The worker gives its team back when it goes idle, just after the caller is answered: counts
# are read once they settle (unchanged for 0.3 s), or once they reach the count expected.
SETTLE = r"""
import os, time
def threads(want=None, timeout=10.0):
    deadline, last, since = time.monotonic() + timeout, None, time.monotonic()
    while True:
        n = len(os.listdir("/proc/self/task"))
        if n != last:
            last, since = n, time.monotonic()
        if n == want or time.monotonic() > deadline:
            return n
        if want is None and time.monotonic() - since >= 0.3:
            return n
        time.sleep(0.05)
"""

# Loads the model (on a thread that ends) and ranks three times: the workers are running.
LOADED = (
    SETTLE
    + r"""
import json, os, sys
import torch
from reranker import Reranker, Settings
reranker = Reranker.load(sys.argv[1], device="cpu", settings=Settings())
docs = [f"passage {i} about rivers, cities and tea " * 12 for i in range(20)]
for i in range(3):
    reranker.rank(f"query {i}", docs)
"""
)

SCRIPT = (
    LOADED
    + r"""
before = threads()
torch.ones(512, 512) @ torch.ones(512, 512)  # the caller's first parallel region
print(json.dumps([before, threads(want=before + 1)]))
"""
)

RELEASE = (
    LOADED
    + r"""
counts = [threads()]
torch.ones(512, 512) @ torch.ones(512, 512)  # the caller's own torch work: a team
counts.append(threads(want=counts[0] + 1))
reranker.rank("query", docs)
counts.append(threads(want=counts[0]))
print(json.dumps(counts))
"""
)


def run_script(script: str, model_dir) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", script, str(model_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_loading_leaves_the_caller_no_openmp_team(model_dir):
    before, after = run_script(SCRIPT, model_dir)
    assert after == before + 1, (before, after)  # a team of 2: the caller and one more thread


def test_a_blocking_call_gives_back_the_callers_team(model_dir):
    base, with_team, after = run_script(RELEASE, model_dir)
    assert with_team == base + 1 and after == base, (base, with_team, after)
