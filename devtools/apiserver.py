"""``rerank serve`` on 127.0.0.1 in a process of its own, for tests and benchmarks.

Starts ``python -m reranker serve`` exactly as a user would, waits (bounded) until ``/health``
says 200, and offers a small stdlib HTTP client. ``stop()`` sends SIGTERM, as an orchestrator
does, and waits for the process to exit.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devtools.localserver import PROJECT_ROOT, ServerError, free_port


class LocalRerankServer:
    def __init__(
        self, model: str | os.PathLike, *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.argv = [
            sys.executable,
            *("-m", "reranker", "serve", "--model", str(model)),
            *("--host", "127.0.0.1", "--port", str(self.port)),
            *args,
        ]
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RERANKER_")},
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (lives as long as the server)
            prefix="rerank-serve-", suffix=".log", delete=False
        )
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> LocalRerankServer:
        self.process = subprocess.Popen(
            self.argv,
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
                if self.request("GET", "/health", timeout=5)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise ServerError(f"not ready after {timeout:.0f}s:\n{self.logs()[-4000:]}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)
        return self.process.returncode

    def __enter__(self) -> LocalRerankServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def logs(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

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

    def post(
        self, path: str, body: object, headers: dict[str, str] | None = None, timeout: float = 60.0
    ) -> tuple[int, object]:
        """POST ``body`` as JSON; the status and the decoded answer (raw text if not JSON)."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        status, answer = self.request("POST", path, raw, hdrs, timeout)
        try:
            return status, json.loads(answer)
        except ValueError:
            return status, answer.decode(errors="replace")

    def metric(self, name: str, headers: dict[str, str] | None = None) -> float:
        """One sample of /metrics, by its full name with labels (0 if absent)."""
        status, text = self.request("GET", "/metrics", headers=headers)
        assert status == 200, text
        for line in text.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def rss_bytes(self) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")
