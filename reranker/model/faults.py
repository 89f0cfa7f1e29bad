"""Which errors leave the GPU unusable, so that the instance can report itself unhealthy.

Most CUDA errors raised mid-pass (an illegal memory access, a device-side assert, a launch
failure after an Xid) are "sticky": the CUDA context is corrupt and every later CUDA call in
the process fails too, until the process is restarted. Serving on would fail every request
while the instance still looked healthy. Out-of-memory is the exception: the context
survives, and the engine already splits the pass and retries.

How such errors reach Python (torch 2.9.1, triton 3.5.1):

- ``torch.AcceleratorError`` (a ``RuntimeError``, torch >= 2.8), raised by
  ``c10/cuda/CUDAException.cpp`` ``c10_cuda_check_implementation`` as
  ``"CUDA error: <cudaGetErrorString>\\n<hints>"``, with ``error_code`` (the ``cudaError_t``)
  set by ``torch/csrc/Exceptions.cpp`` ``_new_accelerator_error_object``.
- A plain ``RuntimeError`` with the same ``"CUDA error: "`` text in older torch, and from
  cuBLAS (``TORCH_CUDABLAS_CHECK``: ``"CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when ..."``);
  ``"CUDA driver error: "`` from ``C10_CUDA_DRIVER_CHECK``.
- ``RuntimeError("Triton Error [CUDA]: ...")`` from compiled kernels
  (``triton/backends/nvidia/driver.c``, ``gpuAssert``).
- ``torch.OutOfMemoryError`` for the caching allocator's out-of-memory: not fatal.
"""

from __future__ import annotations

import torch

CUDA_ERROR_MARKERS = ("CUDA error: ", "CUDA driver error: ", "Triton Error [CUDA]: ")
# Out of memory reported as a CUDA error instead of torch.OutOfMemoryError (a cuBLAS workspace,
# a cudaMalloc outside the caching allocator): the context survives, like for OutOfMemoryError.
RECOVERABLE_MARKERS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED")
CUDA_ERROR_MEMORY_ALLOCATION = 2  # cudaErrorMemoryAllocation
_MAX_REASON = 200
_MAX_CHAIN = 8


class DeviceFailedError(RuntimeError):
    """A request failed because the GPU is unusable; every later request fails the same way."""


def fatal_device_error(exc: BaseException) -> str | None:
    """One line naming the CUDA error if ``exc`` leaves the device unusable, else None.

    Looks through the exception's causes too (``raise ... from`` and errors raised while
    handling one), since a wrapper's message may hide the CUDA error underneath.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < _MAX_CHAIN:
        seen.add(id(current))
        reason = _fatal_reason(current)
        if reason is not None:
            return reason
        current = current.__cause__ or current.__context__
    return None


def _fatal_reason(exc: BaseException) -> str | None:
    if isinstance(exc, torch.OutOfMemoryError):
        return None
    message = str(exc)
    accelerator = getattr(torch, "AcceleratorError", None)  # torch >= 2.8
    is_accelerator = accelerator is not None and isinstance(exc, accelerator)
    # Only RuntimeErrors carry these texts (torch's c10::Error, triton's gpuAssert); a
    # ValueError quoting a user's text that happens to contain one is not a GPU failure.
    marker = None
    if isinstance(exc, RuntimeError):
        marker = next((m for m in CUDA_ERROR_MARKERS if m in message), None)
    if not is_accelerator and marker is None:
        return None
    if getattr(exc, "error_code", None) == CUDA_ERROR_MEMORY_ALLOCATION:
        return None
    if any(m in message for m in RECOVERABLE_MARKERS):
        return None
    if marker is not None:  # the line that names the error, from the marker on
        line = next(ln for ln in message.splitlines() if marker in ln)
        reason = line[line.index(marker) :].strip()
    else:
        lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
        code = getattr(exc, "error_code", None)
        reason = lines[0] if lines else f"accelerator error {code}"
    return reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 3] + "..."
