"""Passes on the replica worker cost what they would on the thread that loaded the model.

libgomp keeps an OpenMP team (its own OS threads) per thread that ran a parallel region; an
idle team spins, then sleeps on a futex. ``Reranker.load`` loads on a thread that ends
(``in_passing_thread`` in reranker/loading/loader.py), so the worker's team is the only one
left: had the caller's thread kept one, the two would wake each other on every op (on 2 CPU
cores, rag-20 passes 44.9 ms instead of 37.7 ms, 175 voluntary context switches per request
instead of 3: bench/results/latency-cpu-2026-12-07.txt). Shown here without a clock: after
loading and ranking, the caller's first parallel region (one matmul) still has to make its
team, so the process gains threads.

Fault seen failing (2026-12-07): ``from_placement`` loading on the caller's thread (no
``in_passing_thread``): the matmul adds no thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.subprocess

SCRIPT = r"""
import json, os, sys
import torch
from reranker import Reranker, Settings
reranker = Reranker.load(sys.argv[1], device="cpu", settings=Settings())
docs = [f"passage {i} about rivers, cities and tea " * 12 for i in range(20)]
for i in range(3):
    reranker.rank(f"query {i}", docs)
threads = len(os.listdir("/proc/self/task"))
torch.ones(512, 512) @ torch.ones(512, 512)  # the caller's first parallel region
print(json.dumps([threads, len(os.listdir("/proc/self/task"))]))
"""


def test_loading_leaves_the_caller_no_openmp_team(model_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(model_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=True,
    )
    before, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert after == before + 1, (before, after)  # a team of 2: the caller and one more thread
