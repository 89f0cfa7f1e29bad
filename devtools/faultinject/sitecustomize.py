"""Fault injection at the torch boundary for server tests: put this folder on PYTHONPATH.

With ``RERANKER_FAULT_FILE`` set, ``torch.Tensor.tolist`` (the engine calls it at the end of
every pass to fetch the logits) raises while that file exists, so a test can send a good
request first and then trigger a fault. The file's content picks the error, built the way
torch 2.9.1 builds it:

- ``fatal``: ``torch.AcceleratorError`` for an illegal memory access (cudaError_t 700), the
  message of ``c10/cuda/CUDAException.cpp`` ``c10_cuda_check_implementation`` and the
  ``error_code`` attribute of ``torch/csrc/Exceptions.cpp`` ``_new_accelerator_error_object``.
- ``oom``: ``torch.OutOfMemoryError`` as the CUDA caching allocator raises it.

torch is patched only once something imports it (a meta-path hook), so the Cog server's
parent process, which never imports torch, pays nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

FAULT_FILE = os.environ.get("RERANKER_FAULT_FILE")

ILLEGAL_ADDRESS = (
    "CUDA error: an illegal memory access was encountered\n"
    "CUDA kernel errors might be asynchronously reported at some other API call, so the "
    "stacktrace below might be incorrect.\n"
    "For debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
    "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n"
)
OUT_OF_MEMORY = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139.81 GiB "
    "of which 1.06 GiB is free."
)


def _fault(torch):
    try:
        with open(FAULT_FILE) as f:
            kind = f.read().strip()
    except OSError:
        return None
    if kind == "fatal":
        error = torch.AcceleratorError(ILLEGAL_ADDRESS)
        error.error_code = 700  # cudaErrorIllegalAddress
        return error
    if kind == "oom":
        return torch.OutOfMemoryError(OUT_OF_MEMORY)
    return RuntimeError(f"unknown fault {kind!r} in {FAULT_FILE}")


def _patch(torch) -> None:
    original = torch.Tensor.tolist

    def tolist(self, *args, **kwargs):
        error = _fault(torch)
        if error is not None:
            raise error
        return original(self, *args, **kwargs)

    torch.Tensor.tolist = tolist


class _PatchTorchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torch")
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module) -> None:
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if FAULT_FILE:
    sys.meta_path.insert(0, _PatchTorchOnImport())
