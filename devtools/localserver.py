"""The real Cog HTTP server (coglet) on 127.0.0.1, for tests and benchmarks.

Starts ``python -m cog.server.http --host 127.0.0.1`` from the project root with this
interpreter's directory first on PATH (coglet starts its worker as plain ``python``), waits
for READY within a bounded time, and offers a small stdlib HTTP client that retries 409
(every concurrency slot busy) the way a real client would.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    pass


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
        deadline = time.monotonic() + retry_409_for
        delay = 0.02
        while True:
            status, raw = self.request("POST", "/predictions", body, hdrs, timeout)
            if status != 409 or time.monotonic() > deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, {"raw": raw.decode(errors="replace")}
