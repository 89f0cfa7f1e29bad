"""GPU faults through the real Cog server (coglet) on CPU.

devtools/faultinject/sitecustomize.py goes on the server's PYTHONPATH: while the file named by
RERANKER_FAULT_FILE exists, torch.Tensor.tolist (called at the end of every pass) raises the
error torch raises on a GPU (torch.AcceleratorError for an illegal memory access, or
torch.OutOfMemoryError). Each test gets its own server, since a fatal fault is final.
"""

from __future__ import annotations

import os

import pytest

from devtools.localserver import PROJECT_ROOT, LocalCogServer

pytestmark = pytest.mark.server

QUERY = "Which city is the capital of France?"
DOCS = ["Paris is the capital of France.", "Bananas are yellow.", "Lyon is in France."]
FATAL_MESSAGE = "the GPU failed (CUDA error: an illegal memory access was encountered); "


@pytest.fixture
def fault(tmp_path):
    return tmp_path / "fault"


@pytest.fixture
def server(model_dir, fault):
    paths = [str(PROJECT_ROOT / "devtools" / "faultinject"), os.environ.get("PYTHONPATH", "")]
    env = {
        "RERANKER_MODEL": str(model_dir),
        "RERANKER_FAULT_FILE": str(fault),
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
    }
    with LocalCogServer(env, concurrency=2) as s:
        yield s


def succeeds(server) -> bool:
    status, body = server.predict({"query": QUERY, "documents": DOCS})
    return status == 200 and body["status"] == "succeeded"


def test_a_fatal_gpu_error_fails_clearly_and_the_instance_turns_unhealthy(server, fault):
    assert succeeds(server) and server.health()["status"] == "READY"
    fault.write_text("fatal")
    status, body = server.predict({"query": QUERY, "documents": DOCS})
    assert status == 200 and body["status"] == "failed", body
    assert FATAL_MESSAGE in body["error"], body["error"]
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    # torch's whole message reaches the instance's log, for the operator
    assert "GPU failure" in server.logs() and "CUDA_LAUNCH_BLOCKING" in server.logs()
    health = server.health()
    assert health["status"] == "UNHEALTHY", health
    assert "returned False" in health["user_healthcheck_error"]
    # A real dead context stays dead; here the fault is gone, so a request that ran a pass
    # would succeed. It must fail fast with the same message instead.
    fault.unlink()
    status, body = server.predict({"query": QUERY, "documents": DOCS})
    assert body["status"] == "failed" and FATAL_MESSAGE in body["error"], body
    assert server.health()["status"] == "UNHEALTHY"
    assert server.alive


def test_out_of_memory_and_bad_input_leave_the_instance_ready(server, fault):
    fault.write_text("oom")
    status, body = server.predict({"query": QUERY, "documents": DOCS})
    assert status == 200 and body["status"] == "failed", body
    assert "does not fit in GPU memory" in body["error"]
    assert server.health()["status"] == "READY"
    fault.unlink()
    status, body = server.predict({"query": QUERY, "documents": "Paris, Lyon"})
    assert body["status"] == "failed" and "documents must be a list" in body["error"]
    assert server.health()["status"] == "READY"
    assert succeeds(server)
