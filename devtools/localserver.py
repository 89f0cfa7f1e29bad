"""The real Cog HTTP server (coglet) on 127.0.0.1, for tests and benchmarks.

Starts ``python -m cog.server.http --host 127.0.0.1`` from the project root with this
interpreter's directory first on PATH (coglet starts its worker as plain ``python``), waits
for READY within a bounded time, and offers a small stdlib HTTP client that retries 409
(every concurrency slot busy) the way a real client would.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    pass


def retry_409(send: Callable[[], tuple], seconds: float, stop: threading.Event | None = None):
    """``send()`` again while it answers 409 (every slot busy), with backoff, as a client
    would; for at most ``seconds``, and not once ``stop`` is set."""
    deadline, delay = time.monotonic() + seconds, 0.02
    while True:
        answer = send()
        if answer[0] != 409 or time.monotonic() > deadline or (stop and stop.is_set()):
            return answer
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


class Webhooks:
    """A webhook receiver on 127.0.0.1: the final state of async predictions, by id."""

    def __init__(self) -> None:
        self.final: dict[str, dict] = {}
        self.cond = threading.Condition()
        hooks = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                event = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if event.get("status") in ("succeeded", "failed", "canceled"):
                    with hooks.cond:
                        hooks.final[event["id"]] = event
                        hooks.cond.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait(self, pid: str, timeout: float, dead: threading.Event) -> dict | None:
        """The final event of prediction ``pid``; None after ``timeout`` or once ``dead``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while pid not in self.final and not dead.is_set() and time.monotonic() < deadline:
                self.cond.wait(1.0)
            return self.final.get(pid)

    def close(self) -> None:
        self.httpd.shutdown()


class LocalCogServer:
    def __init__(self, env: dict[str, str], *, concurrency: int | None = None) -> None:
        self.port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RERANKER_")},
            **env,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
            "PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
        }
        if concurrency is not None:
            self.env["COG_MAX_CONCURRENCY"] = str(concurrency)
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (lives as long as the server)
            prefix="cog-server-", suffix=".log", delete=False
        )
        self.process: subprocess.Popen | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> LocalCogServer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"],
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"the server exited ({self.process.returncode}):\n{self.logs()}")
            try:
                status = self.health().get("status")
            except OSError:
                status = None
            if status == "READY":
                return self
            if status == "SETUP_FAILED":
                raise ServerError(f"setup failed:\n{self.health()}")
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"not READY after {timeout:.0f}s:\n{self.logs()[-4000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)

    def __enter__(self) -> LocalCogServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def logs(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- HTTP --------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def health(self) -> dict:
        status, body = self.request("GET", "/health-check", timeout=10)
        return json.loads(body) if status == 200 else {"status": f"HTTP {status}"}

    def wait_ready(self, timeout: float) -> tuple[str, float]:
        """Until health is READY (no slot held); the last status seen and the seconds taken."""
        started = time.monotonic()
        status = "?"
        while time.monotonic() - started < timeout and self.alive:
            try:
                status = self.health().get("status")
            except OSError as exc:
                status = f"error: {exc}"
            if status == "READY":
                break
            time.sleep(0.5)
        return status, time.monotonic() - started

    def submit_async(
        self, inputs: dict, webhook: str, prefix: str = "async"
    ) -> tuple[int, str, bytes]:
        """PUT a prediction with ``Prefer: respond-async``; its final state goes to
        ``webhook``. (HTTP status, prediction id, raw answer)."""
        pid = f"{prefix}-{uuid.uuid4().hex}"
        body = {"input": inputs, "webhook": webhook, "webhook_events_filter": ["completed"]}
        headers = {"Content-Type": "application/json", "Prefer": "respond-async"}
        status, raw = self.request("PUT", f"/predictions/{pid}", json.dumps(body).encode(), headers)
        return status, pid, raw

    def cancel(self, pid: str) -> int:
        """POST /predictions/{pid}/cancel; the HTTP status."""
        return self.request("POST", f"/predictions/{pid}/cancel", b"", {})[0]

    def predict(
        self,
        inputs: dict,
        *,
        timeout: float = 120.0,
        headers: dict[str, str] | None = None,
        retry_409_for: float = 30.0,
    ) -> tuple[int, dict]:
        """POST /predictions; a 409 (all slots busy) is retried with backoff for a while."""
        body = json.dumps({"input": inputs}).encode()
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        status, raw = retry_409(
            lambda: self.request("POST", "/predictions", body, hdrs, timeout), retry_409_for
        )
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, {"raw": raw.decode(errors="replace")}

    def slots_free(
        self,
        n: int,
        hooks: Webhooks,
        slow: Callable[[random.Random], dict],
        timeout: float,
        wait: float,
        dead: threading.Event,
        prefix: str = "async",
    ) -> dict:
        """Every one of the ``n`` slots is free: ``n`` slow async requests (``slow(rng)``, one
        rng seeded by the attempt) are accepted at once and one more gets 409; then all are
        cancelled, each final state awaited for ``wait`` s by ``hooks``. A slot still held by a
        cancelled or dropped request shows as a 409 too early; retried until ``timeout`` (or
        ``dead`` is set)."""
        started = time.monotonic()
        attempt = 0
        while not dead.is_set() and time.monotonic() - started < timeout:
            attempt += 1
            rng = random.Random(attempt)
            sent = [self.submit_async(slow(rng), hooks.url, prefix) for _ in range(n + 1)]
            accepted = [pid for status, pid, _ in sent if status == 202]
            time.sleep(0.5)  # past coglet's cancel race (bench/soak.py, COGLET_RACE)
            for pid in accepted:
                self.cancel(pid)
            finals = [hooks.wait(pid, wait, dead) for pid in accepted]
            result = {
                "accepted": len(accepted),
                "answers": dict(Counter(status for status, _, _ in sent)),
                "finals": dict(Counter(f and f.get("status") for f in finals)),
                "attempts": attempt,
                "seconds": round(time.monotonic() - started, 1),
            }
            result["ok"] = len(accepted) == n and None not in result["finals"]
            if len(accepted) >= n:
                return result
            time.sleep(1.0)
        return {"ok": False, "attempts": attempt, "seconds": round(time.monotonic() - started, 1)}
