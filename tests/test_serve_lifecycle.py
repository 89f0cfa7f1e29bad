"""`rerank serve`'s life: 503 until loaded, one clear line when loading fails, GPU faults turn
/health to 503, SIGTERM drains. Each test has its own server process; every wait is bounded.

Faults seen failing (2026-12-07): /health ignoring ``service.healthy()`` (200 after the fatal
fault); /health answering 200 while loading; uvicorn's graceful shutdown cut to 0.1 s (the
request in flight got a 500).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from devtools.apiserver import LocalRerankServer
from devtools.localserver import PROJECT_ROOT, free_port

pytestmark = pytest.mark.server

QUERY = "Which city is the capital of France?"
DOCS = ["Paris is the capital of France.", "Bananas are yellow.", "Lyon is in France."]
FATAL = "the GPU failed (CUDA error: an illegal memory access was encountered); "


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RERANKER_")}
    return subprocess.Popen(
        [sys.executable, "-m", "reranker", "serve", *args],
        cwd=PROJECT_ROOT,
        env={**clean, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_a_failed_load_is_one_line_and_exit_1(tmp_path):
    port = free_port()
    missing = tmp_path / "nowhere"
    proc = serve("--port", str(port), env={"RERANKER_MODEL": str(missing)})
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, out
    assert f"setup failed: WeightsError: RERANKER_MODEL={missing} does not exist" in out
    assert "Traceback" not in out


def test_health_is_503_while_loading(model_dir):
    port = free_port()
    proc = serve("--model", str(model_dir), "--port", str(port))
    # Its output is read as it comes: every probe adds an access-log line, and a full pipe
    # would block the server's next write (its "ready" line included).
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    seen: set[int] = set()
    tei: list = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and 200 not in seen:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    head = s.makefile("rb").readline().decode()
                seen.add(int(head.split()[1]))
                if 200 not in seen:  # loading: a TEI client gets TEI's shape
                    status, body = post_json(port, "/rerank", {"query": QUERY, "texts": DOCS})
                    tei += [body] if status == 503 else []
            except OSError:
                time.sleep(0.05)
        assert seen == {503, 200}, seen  # listening before the model is ready
        # fault seen failing: the 503 raised before the body was read, in Cohere's shape
        loading = {"error": "the model is still loading; retry shortly", "error_type": "unhealthy"}
        assert tei and all(body == loading for body in tei), tei
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    out = "".join(lines)
    # uvicorn shuts down cleanly, then re-raises the signal it caught: the exit says SIGTERM
    assert proc.returncode == -signal.SIGTERM and "Finished server process" in out, out[-2000:]


def post_json(port: int, path: str, body: dict) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.fixture
def faulty(model_dir, tmp_path):
    fault = tmp_path / "fault"
    paths = [str(PROJECT_ROOT / "devtools" / "faultinject"), os.environ.get("PYTHONPATH", "")]
    env = {"RERANKER_FAULT_FILE": str(fault), "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    with LocalRerankServer(model_dir, env=env) as s:
        yield s, fault


def test_a_fatal_gpu_error_turns_health_503_and_fails_fast(faulty):
    server, fault = faulty
    assert server.post("/v1/rerank", {"query": QUERY, "documents": DOCS})[0] == 200
    fault.write_text("oom")  # recoverable: a clear 400, still healthy
    status, body = server.post("/v1/rerank", {"query": QUERY, "documents": DOCS})
    assert status == 400 and "does not fit in GPU memory" in body["message"], body
    assert server.request("GET", "/health")[0] == 200
    fault.write_text("fatal")
    status, body = server.post("/v1/rerank", {"query": QUERY, "documents": DOCS})
    assert status == 503 and FATAL in body["message"], body
    assert "\n" not in body["message"] and "Traceback" not in json.dumps(body)
    status, raw = server.request("GET", "/health")
    health = json.loads(raw)
    assert status == 503 and health["status"] == "unhealthy" and FATAL in health["error"]
    fault.unlink()  # a dead CUDA context stays dead: fail fast, same message
    status, body = server.post("/v2/rerank", {"query": QUERY, "documents": DOCS})
    assert status == 503 and FATAL in body["message"]
    # a TEI client reads TEI's error shape
    status, body = server.post("/rerank", {"query": QUERY, "texts": DOCS})
    assert status == 503 and body["error_type"] == "unhealthy" and FATAL in body["error"], body
    assert server.alive


def test_sigterm_drains_requests_in_flight(model_dir):
    server = LocalRerankServer(model_dir, env={"RERANKER_MAX_BATCH_TOKENS": "400"}).start()
    try:
        docs = [f"document {i} " * 12 for i in range(800)]  # seconds of passes
        answers: list = []
        client = threading.Thread(
            target=lambda: answers.append(
                server.post(
                    "/v1/rerank", {"query": "q", "documents": docs, "top_n": 3}, timeout=120
                )
            )
        )
        client.start()
        deadline = time.monotonic() + 30
        while server.metric("reranker_forward_pass_seconds_count") < 3:
            assert time.monotonic() < deadline, "the long request never started"
            time.sleep(0.05)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(OSError):  # no longer listening
            server.request("GET", "/health", timeout=5)
        client.join(timeout=120)
        assert answers and answers[0][0] == 200, answers
        assert len(answers[0][1]["results"]) == 3
        assert server.process.wait(timeout=60) == -signal.SIGTERM
        print(f"drained and exited {time.monotonic() - signalled:.1f}s after SIGTERM")
        assert "Finished server process" in server.logs()
    finally:
        server.stop()
