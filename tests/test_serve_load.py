"""`rerank serve` under load: concurrent clients share passes, a client that leaves is
cancelled, and a bounded soak of good, bad and oversized requests leaves memory bounded.

The server runs with a 400-token pass budget (as tests/test_server_concurrency.py runs Cog's),
so requests take several passes and sharing them shows in the pass count.

Faults seen failing (2026-12-07): requests serialized by a lock in the handler (24 passes with
8 clients, as many as one at a time); the disconnect watch removed (never cancelled); every
body kept by the guard (RSS +81 MiB after warm-up).
"""

from __future__ import annotations

import json
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from devtools.apiserver import LocalRerankServer

pytestmark = pytest.mark.server

PASSES = "reranker_forward_pass_seconds_count"


@pytest.fixture(scope="module")
def server(model_dir):
    with LocalRerankServer(model_dir, env={"RERANKER_MAX_BATCH_TOKENS": "400"}) as s:
        yield s


def request_specs(n: int, seed: int = 3) -> list[dict]:
    from test_server_concurrency import request_specs as cog_specs

    return [
        {"query": s["query"], "documents": s["documents"], "top_n": s["top_k"]}
        for s in cog_specs(n)
    ]


def test_eight_concurrent_clients_share_passes_and_get_solo_results(server, reranker):
    specs = request_specs(24)
    before = server.metric(PASSES)
    for spec in specs:  # one at a time
        assert server.post("/v1/rerank", spec)[0] == 200
    sequential = server.metric(PASSES) - before

    def client(chunk):
        return [server.post("/v1/rerank", spec, timeout=120) for spec in chunk]

    before = server.metric(PASSES)
    with ThreadPoolExecutor(8) as pool:
        chunks = [specs[i::8] for i in range(8)]
        answers = dict(zip(range(8), pool.map(client, chunks), strict=True))
    concurrent = server.metric(PASSES) - before
    for i in range(8):
        for spec, (status, body) in zip(specs[i::8], answers[i], strict=True):
            assert status == 200, body
            want = reranker.rank(spec["query"], spec["documents"], top_k=spec["top_n"])
            assert [r["index"] for r in body["results"]] == [r.index for r in want.results]
            for got, exp in zip(body["results"], want.results, strict=True):
                assert abs(got["relevance_score"] - exp.score) <= 1e-5
    print(f"passes: {sequential:.0f} one at a time, {concurrent:.0f} with 8 clients")
    assert concurrent < sequential  # the same documents in fewer, fuller passes


N_LEFT = 6000
LEFT = 'reranker_request_errors_total{kind="client_left"}'


def test_a_client_that_leaves_is_cancelled(server):
    """A request of ~2,000 passes whose client leaves after 1.5 s is dropped: passes stop
    (at most half of its passes ran, none after), and the server answers the next request.

    It may leave while its documents are still tokenized (a loaded machine) or while they
    are queued (then the log says how many left the queue unscored); either way no more of
    its passes run. CI once scored 2,201 of 3,000 twelve-word documents in those 1.5 s: the
    documents are 40 words now."""
    docs = [f"document {i} " * 40 for i in range(N_LEFT)]
    body = json.dumps({"query": "q", "documents": docs}).encode()
    logged = server.logs().count("left the queue unscored")
    left, passes = server.metric(LEFT), server.metric(PASSES)
    with pytest.raises(TimeoutError):
        server.request(
            "POST", "/v1/rerank", body, {"Content-Type": "application/json"}, timeout=1.5
        )
    deadline = time.monotonic() + 60
    while server.metric(LEFT) == left:
        assert time.monotonic() < deadline, "the abandoned request was never cancelled"
        time.sleep(0.1)
    time.sleep(0.5)  # a pass already running when it left may finish
    settled = server.metric(PASSES)
    time.sleep(1.0)
    assert server.metric(PASSES) == settled  # nothing of it runs after the cancel
    assert settled - passes < N_LEFT * 120 / 400 / 2, settled - passes
    if server.logs().count("left the queue unscored") > logged:
        dropped = re.findall(rf"cancelled: (\d+) of {N_LEFT} distinct documents", server.logs())
        assert dropped and int(dropped[-1]) > N_LEFT // 2
    assert server.post("/v1/rerank", {"query": "q", "documents": ["a"]})[0] == 200


SOAK_REQUESTS = 240
SOAK_SECONDS = 120


@pytest.mark.soak
def test_soak_keeps_memory_bounded(server):
    """Good, bad and oversized requests from 4 clients, bounded in count and time: every
    answer is a 200 or the 4xx it should be, and resident memory stops growing once warm.
    Keeping each 1 MB body would add 80 MB after warm-up."""
    rng = random.Random(7)
    big = {"query": "q", "documents": ["a", "b"], "padding": "x" * (1 << 20)}  # 1 MB, ignored
    huge = b'{"query": "q", "documents": ["' + b"x" * (9 << 20) + b'"]}'  # over the bound
    kinds = ["good", "bad", "big", "big", "huge"]

    def one(i: int) -> tuple[str, int]:
        kind = kinds[i % len(kinds)]
        if kind == "good":
            docs = [" ".join(rng.choices(["tea", "city", "river"], k=20)) for _ in range(10)]
            return kind, server.post("/v2/rerank", {"query": f"q{i}", "documents": docs})[0]
        if kind == "bad":
            return kind, server.post("/v2/rerank", {"query": "q", "documents": [i]})[0]
        if kind == "big":
            return kind, server.post("/v2/rerank", big)[0]
        try:
            return kind, server.post("/v2/rerank", huge)[0]
        except OSError:  # answered 413 and closed while the body was still being sent
            return kind, 413

    expected = {"good": 200, "bad": 400, "big": 200, "huge": 413}
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        warm_up = list(pool.map(one, range(40)))
        warm = server.rss_bytes()
        rest = []
        for start in range(40, SOAK_REQUESTS, 40):
            if time.monotonic() - started > SOAK_SECONDS:
                break
            rest += list(pool.map(one, range(start, start + 40)))
    end = server.rss_bytes()
    wrong = [(k, s) for k, s in warm_up + rest if s != expected[k]]
    assert not wrong, wrong[:5]
    print(f"{len(warm_up) + len(rest)} requests; RSS {warm / 2**20:.0f} -> {end / 2**20:.0f} MiB")
    assert len(rest) >= 120
    assert end - warm < 48 * 2**20, f"RSS grew {(end - warm) / 2**20:.0f} MiB after warm-up"
    assert server.request("GET", "/health")[0] == 200
