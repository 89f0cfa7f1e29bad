"""GPU faults: which errors kill the device, and what the service does after one (no server).

The exceptions are torch's own classes with the messages torch 2.9.1 builds (see
``reranker/model/faults.py``); the service tests raise them from ``torch.Tensor.tolist``, which the
engine calls at the end of every pass, so the fault enters where a real one would.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from devtools.faultinject.sitecustomize import ILLEGAL_ADDRESS, OUT_OF_MEMORY
from reranker import Reranker
from reranker.config import Limits
from reranker.model.engine import DocumentTooLargeError
from reranker.model.faults import DeviceFailedError, fatal_device_error
from reranker.model.scorer import NonFiniteError
from reranker.service import RerankService

QUERY = "Which city is the capital of France?"
DOCS = ["Paris is the capital of France.", "Bananas are yellow.", "Lyon is in France."]


def accelerator_error(message: str, code: int) -> torch.AcceleratorError:
    """As torch/csrc/Exceptions.cpp ``_new_accelerator_error_object`` builds it."""
    error = torch.AcceleratorError(message)
    error.error_code = code
    return error


def chained(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


FATAL = {
    "illegal address": (
        accelerator_error(ILLEGAL_ADDRESS, 700),
        "CUDA error: an illegal memory access was encountered",
    ),
    "device-side assert": (
        accelerator_error("CUDA error: device-side assert triggered\nCompile with ...", 710),
        "CUDA error: device-side assert triggered",
    ),
    "launch failure (Xid)": (
        accelerator_error("CUDA error: unspecified launch failure\n", 719),
        "CUDA error: unspecified launch failure",
    ),
    "message stripped at build (STRIP_ERROR_MESSAGES)": (
        accelerator_error("", 999),
        "accelerator error 999",
    ),
    "older torch: RuntimeError": (
        RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel ..."),
        "CUDA error: an illegal memory access was encountered",
    ),
    "cuBLAS after a dead context": (
        RuntimeError(
            "CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx( handle, "
            "opa, opb, m, n, k, &falpha, a, CUDA_R_16F, lda, b, CUDA_R_16F, ldb, &fbeta, c, "
            "CUDA_R_16F, ldc, compute_type, CUBLAS_GEMM_DEFAULT_TENSOR_OP)`"
        ),
        "CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx( handle, ",
    ),
    "compiled (Triton) kernel": (
        RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered"),
        "Triton Error [CUDA]: an illegal memory access was encountered",
    ),
    "wrapped in the scheduler's message": (
        RuntimeError("internal error while scoring: CUDA error: misaligned address\nmore"),
        "CUDA error: misaligned address",
    ),
    "the cause of another error": (
        chained(ValueError("scoring failed"), accelerator_error(ILLEGAL_ADDRESS, 700)),
        "CUDA error: an illegal memory access was encountered",
    ),
}

ORDINARY = {
    "out of memory": torch.OutOfMemoryError(OUT_OF_MEMORY),
    "out of memory as a CUDA error": accelerator_error("CUDA error: out of memory\n", 2),
    "cuBLAS workspace out of memory": RuntimeError(
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
    ),
    "document too large": DocumentTooLargeError("a prompt of 9,000 tokens does not fit"),
    "non-finite scores": NonFiniteError("the model produced non-finite values in float16"),
    "bad input": ValueError("documents[1] must be a string, not int"),
    "bad input quoting a user's text": ValueError("query 'CUDA error: x' is not allowed"),
    "other runtime error": RuntimeError("expected scalar type Float but found Half"),
    "out of memory raised while handling another": chained(
        RuntimeError("retry failed"), torch.OutOfMemoryError(OUT_OF_MEMORY)
    ),
}


@pytest.mark.parametrize("name", FATAL)
def test_errors_that_kill_the_cuda_context_are_fatal(name):
    error, reason = FATAL[name]
    got = fatal_device_error(error)
    assert got is not None and got.startswith(reason)
    assert "\n" not in got and len(got) <= 200


@pytest.mark.parametrize("name", ORDINARY)
def test_ordinary_errors_are_not(name):
    assert fatal_device_error(ORDINARY[name]) is None


@pytest.fixture
def service(reranker):
    """The session's model behind a service of its own (closing it leaves the fixture's)."""
    limits = Limits(max_request_tokens=1000)  # DOCS fit, ten times DOCS do not
    svc = RerankService(Reranker(reranker.engines, reranker.encoder, limits=limits))
    yield svc
    svc.close()


def rerank(service, documents=DOCS) -> list[int]:
    request = service.reranker.request(QUERY, documents)
    result, _ = asyncio.run(service.rerank(request, say=lambda _: None))
    return [r.index for r in result.results]


def raise_from_tolist(monkeypatch, error: BaseException) -> None:
    def tolist(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)


def test_a_fatal_gpu_error_fails_clearly_and_marks_the_service_unhealthy(service, monkeypatch):
    good = rerank(service)
    assert service.healthy()
    with monkeypatch.context() as mp:
        raise_from_tolist(mp, accelerator_error(ILLEGAL_ADDRESS, 700))
        with pytest.raises(DeviceFailedError) as failed:
            rerank(service)
    message = str(failed.value)
    assert message.startswith(
        "the GPU failed (CUDA error: an illegal memory access was encountered); "
    )
    assert "\n" not in message and "retry" in message
    assert not service.healthy()
    # The device works again here, but a real dead context would not: refuse without running.
    passes = service.reranker.engine.passes
    with pytest.raises(DeviceFailedError) as again:
        rerank(service)
    assert str(again.value) == message
    assert service.reranker.engine.passes == passes
    assert good  # the request before the fault was served


def test_out_of_memory_and_bad_input_leave_the_service_healthy(service, monkeypatch):
    with monkeypatch.context() as mp:
        raise_from_tolist(mp, torch.OutOfMemoryError(OUT_OF_MEMORY))
        with pytest.raises(DocumentTooLargeError):
            rerank(service)
    assert service.healthy()
    with pytest.raises(ValueError, match="prompt tokens after truncation; the limit"):
        rerank(service, DOCS * 10)  # over the request's token budget: found in the service
    assert service.healthy()
    assert len(rerank(service)) == len(DOCS)
