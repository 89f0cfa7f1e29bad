"""Concurrent clients, cancellation and client disconnects against the real Cog server."""

from __future__ import annotations

import http.server
import json
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from devtools.localserver import LocalCogServer, free_port

pytestmark = pytest.mark.server

CLIENTS = 4
REQUESTS_PER_CLIENT = 6


@pytest.fixture(scope="module")
def server(model_dir):
    env = {"RERANKER_MODEL": str(model_dir), "RERANKER_MAX_BATCH_TOKENS": "400"}
    with LocalCogServer(env, concurrency=CLIENTS) as s:
        yield s


def request_specs(n: int) -> list[dict]:
    rng = random.Random(3)
    words = ["tea", "Paris", "rank", "model", "green", "city", "token", "river", "stone"]
    return [
        {
            "query": f"question {i} about {rng.choice(words)}",
            "documents": [
                " ".join(rng.choices(words, k=rng.randint(1, 30)))
                for _ in range(rng.randint(3, 12))
            ],
            "top_k": rng.choice([0, 3, 5]),
        }
        for i in range(n)
    ]


def test_concurrent_clients_get_their_own_exact_results(server, reranker):
    specs = request_specs(CLIENTS * REQUESTS_PER_CLIENT)

    def run_client(chunk):
        return [server.predict(spec, timeout=120) for spec in chunk]

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        chunks = [specs[i::CLIENTS] for i in range(CLIENTS)]
        answers = [a for chunk in pool.map(run_client, chunks) for a in chunk]
    concurrent_s = time.perf_counter() - started
    ordered = [spec for i in range(CLIENTS) for spec in specs[i::CLIENTS]]
    errors = [
        body for status, body in answers if status != 200 or body.get("status") != "succeeded"
    ]
    assert not errors, errors[:3]
    for spec, (_, body) in zip(ordered, answers, strict=True):
        want = reranker.rank(spec["query"], spec["documents"], top_k=spec["top_k"]).to_dict()
        got = body["output"]
        assert [r["index"] for r in got["results"]] == [r["index"] for r in want["results"]]
        assert (
            max(
                abs(a["score"] - b["score"])
                for a, b in zip(got["results"], want["results"], strict=True)
            )
            <= 1e-5
        )
        assert got["usage"] == want["usage"]
    started = time.perf_counter()
    for spec in specs:
        assert server.predict(spec)[1]["status"] == "succeeded"
    sequential_s = time.perf_counter() - started
    print(f"{CLIENTS} clients: {concurrent_s:.1f}s; one by one: {sequential_s:.1f}s")
    assert server.health()["status"] == "READY"


class Webhooks:
    """A 127.0.0.1 receiver for Cog's webhooks."""

    def __init__(self):
        self.events: list[dict] = []
        hooks = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                size = int(self.headers.get("Content-Length", 0))
                hooks.events.append(json.loads(self.rfile.read(size)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_final(self, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = [
                e for e in self.events if e.get("status") in ("succeeded", "failed", "canceled")
            ]
            if done:
                return done[-1]
            time.sleep(0.1)
        raise AssertionError(f"no final webhook within {timeout}s: {self.events}")


SLOW_DOCUMENTS = 6000


def slow_request() -> dict:
    """Long by construction: batch_size=1 makes one pass per document, 6,000 passes; even at
    a millisecond a pass (the tiny model on a fast CPU) that is seconds, while the tests cancel
    within a second of its start."""
    docs = [f"document {i} " * 8 for i in range(SLOW_DOCUMENTS)]
    return {"query": "q", "documents": docs, "batch_size": 1}


def test_cancel_drops_the_rest_of_the_request(server):
    hooks = Webhooks()
    body = json.dumps(
        {
            "input": slow_request(),
            "webhook": f"http://127.0.0.1:{hooks.port}/hook",
            "webhook_events_filter": ["start", "logs", "completed"],
        }
    ).encode()
    headers = {"Content-Type": "application/json", "Prefer": "respond-async"}
    status, _ = server.request("PUT", "/predictions/cancel-me", body, headers)
    assert status == 202
    deadline = time.monotonic() + 60
    while not any("scored" in (e.get("logs") or "") for e in hooks.events):
        assert time.monotonic() < deadline, "the request never started scoring"
        time.sleep(0.05)
    status, _ = server.request("POST", "/predictions/cancel-me/cancel", b"", {})
    assert status == 200
    final = hooks.wait_final()
    assert final["status"] == "canceled"
    dropped = re.search(
        rf"cancelled: (\d+) of {SLOW_DOCUMENTS} distinct documents left the queue", server.logs()
    )
    assert dropped and int(dropped.group(1)) > SLOW_DOCUMENTS // 2
    # the other slots kept working throughout
    assert server.predict({"query": "q", "documents": ["a", "b"]})[1]["status"] == "succeeded"
    hooks.httpd.shutdown()


def test_client_disconnect_cancels_and_the_server_stays_ready(server):
    before = server.logs().count("left the queue unscored")
    body = json.dumps({"input": slow_request()}).encode()
    with pytest.raises(TimeoutError):
        server.request(
            "POST", "/predictions", body, {"Content-Type": "application/json"}, timeout=1.0
        )
    deadline = time.monotonic() + 30
    while server.logs().count("left the queue unscored") == before:
        assert time.monotonic() < deadline, "the dropped request was never cancelled"
        time.sleep(0.1)
    assert server.health()["status"] == "READY"
    assert server.predict({"query": "q", "documents": ["a"]})[1]["status"] == "succeeded"
