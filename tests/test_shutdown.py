"""SIGTERM while requests run, through the real Cog server (coglet) and its worker process.

Replicate scales an instance down with SIGTERM. In the image, tini (PID 1, ``tini --``) passes
it to the server only; ``kill -- -PGID`` and some supervisors signal the whole process group.
Either way the server drains (``crates/coglet/src/transport/http/server.rs``, ``serve``: axum's
graceful shutdown, then ``ControlRequest::Shutdown`` to the worker): new connections are
refused, running synchronous requests are answered, then both processes exit. Predictions
started with ``Prefer: respond-async`` are not drained: the server exits at once without a
final webhook. Every wait below is bounded; no test leaves a process behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from devtools.localserver import LocalCogServer

pytestmark = pytest.mark.server

QUERY = "Which city is the capital of France?"
# ~1M tokens: several seconds on this CPU, so SIGTERM lands mid-request with time to spare.
LONG_DOCS = [f"document {i} " * 40 for i in range(4000)]
# After the last answer (or at once for async work) coglet sends the worker
# ControlRequest::Shutdown and SIGKILLs it if it has not exited 10 s later (coglet 0.23.1,
# seen with strace: kill(worker, SIGKILL) 10.0 s after "Server shutdown complete"). So a worker
# that cannot exit by itself (a non-daemon thread, a hung close) is still killed, and the only
# sign is the 10 s: this bound must stay below it. Measured 0.1-3.3 s on a 2-core CPU at load 7.
EXIT_BOUND_S = 9.0


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _processes(pgid: int) -> dict[int, str]:
    """Live (non-zombie) processes of a process group: pid -> start time."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and int(fields[2]) == pgid and fields[0] != "Z":
                found[int(entry.name)] = fields[19]
    return found


def _alive(procs: dict[int, str]) -> dict[int, str]:
    """Those of ``procs`` still running (same pid and start time, not a zombie)."""
    out = {}
    for pid, start in procs.items():
        fields = _stat(pid)
        if fields and fields[0] != "Z" and fields[19] == start:
            out[pid] = start
    return out


def _wait_gone(procs: dict[int, str], timeout: float) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while (left := _alive(procs)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _kill(procs: dict[int, str]) -> None:
    for pid in _alive(procs):
        os.kill(pid, signal.SIGKILL)


def _assert_exits(server: LocalCogServer, since: float) -> None:
    """The server and its worker exit by themselves, EXIT_BOUND_S after ``since`` at most."""
    left = _wait_gone(server.procs, EXIT_BOUND_S - (time.monotonic() - since))
    assert not left, (
        f"processes still running {EXIT_BOUND_S:.0f}s after the server had nothing left to "
        f"do: {left} (coglet would SIGKILL the worker at 10 s)\n{server.logs()[-2000:]}"
    )
    assert server.process.wait(timeout=5) == 0, server.logs()[-3000:]
    assert not _processes(server.process.pid), "a process of the server's group is left"


def _wait_for_log(server: LocalCogServer, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.logs():
        assert server.alive, f"the server exited early:\n{server.logs()[-3000:]}"
        assert time.monotonic() < deadline, f"{text!r} not logged in {timeout:.0f}s"
        time.sleep(0.05)


def _refuses_connections(port: int, while_alive: threading.Thread, timeout: float) -> bool:
    """True once a new TCP connection is refused, checked while ``while_alive`` still runs."""
    deadline = time.monotonic() + timeout
    while while_alive.is_alive() and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return while_alive.is_alive()
        except OSError:
            pass
        time.sleep(0.05)
    return False


@pytest.fixture
def server(model_dir):
    s = LocalCogServer({"RERANKER_MODEL": str(model_dir)}, concurrency=4).start()
    procs = _processes(s.process.pid)  # start_new_session: the server leads its own group
    assert len(procs) == 2, f"expected the server and its worker, found {procs}"
    s.procs = procs
    try:
        yield s
    finally:
        s.stop()
        _kill(procs)


@pytest.mark.parametrize("target", ["server", "group"])
def test_sigterm_drains_a_running_request(server, target):
    """SIGTERM to the server (as tini sends it) or to its whole group: the running request is
    answered in full, new connections are refused meanwhile, then every process exits.

    Faults seen failing: no SIG_IGN in predict.py setup() (group: "Worker crashed"); a
    non-daemon thread started in setup() (both: the worker is left for coglet's 10 s SIGKILL).
    """
    result: dict = {}

    def client() -> None:
        result["reply"] = server.predict(
            {"query": QUERY, "documents": LONG_DOCS, "top_k": 1}, timeout=120
        )

    thread = threading.Thread(target=client)
    thread.start()
    _wait_for_log(server, "scored ")  # the request is in the worker, passes are running
    pid = server.process.pid
    (os.killpg if target == "group" else os.kill)(pid, signal.SIGTERM)
    refused = _refuses_connections(server.port, while_alive=thread, timeout=60)
    thread.join(120)
    assert not thread.is_alive(), "the client got no answer in 120 s"
    answered = time.monotonic()
    assert refused, "no new connection was refused while the running request drained"

    status, body = result["reply"]
    assert status == 200 and body.get("status") == "succeeded", body
    assert body["output"]["total_documents"] == len(LONG_DOCS)
    assert body["metrics"]["documents"] == len(LONG_DOCS)

    _assert_exits(server, since=answered)


class _Webhooks(BaseHTTPRequestHandler):
    statuses: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.statuses.append(body.get("status"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_sigterm_drops_a_running_async_prediction_and_exits(server):
    """An async prediction is not drained: the server exits at once, the worker with it, and
    the prediction never reports success (coglet sends no final webhook).

    Fault seen failing: a non-daemon thread started in setup() (worker left for the SIGKILL).
    """
    hooks = ThreadingHTTPServer(("127.0.0.1", 0), _Webhooks)
    _Webhooks.statuses = []
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    try:
        body = {
            "input": {"query": QUERY, "documents": LONG_DOCS, "top_k": 1},
            "webhook": f"http://127.0.0.1:{hooks.server_port}/hook",
        }
        headers = {"Content-Type": "application/json", "Prefer": "respond-async"}
        status, raw = server.request("POST", "/predictions", json.dumps(body).encode(), headers)
        assert status == 202, raw
        _wait_for_log(server, "scored ")
        os.kill(server.process.pid, signal.SIGTERM)
        signalled = time.monotonic()
        _assert_exits(server, since=signalled)
        time.sleep(1.0)  # a late webhook would arrive now
        assert "succeeded" not in _Webhooks.statuses, _Webhooks.statuses
        assert "processing" in _Webhooks.statuses  # the webhook path itself worked
    finally:
        hooks.shutdown()
        hooks.server_close()


def test_setup_outside_cog_leaves_sigterm_alone(model_dir, monkeypatch):
    """The worker's SIGTERM ignore is for Cog's worker only: a test runner or script that calls
    setup() directly must stay killable by SIGTERM.

    Fault seen failing: the ``coglet.server.active`` condition removed (SIG_IGN here too).
    """
    import predict

    monkeypatch.setenv("RERANKER_MODEL", str(model_dir))
    before = signal.getsignal(signal.SIGTERM)
    p = predict.Predictor()
    p.setup()
    try:
        assert signal.getsignal(signal.SIGTERM) == before
    finally:
        p.service.close()
        signal.signal(signal.SIGTERM, before)
