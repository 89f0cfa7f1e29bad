"""FP8 (W8A8) GEMMs, experimental: ``RERANKER_QUANTIZATION=fp8``.

Weights are quantized once at load to float8_e4m3fn with one float32 scale per output channel
(row of the (N, K) weight); activations are quantized at every GEMM with one scale per token
(row). Per-token scales keep a request's scores independent of the other requests in its pass:
a per-tensor scale would let one document's outlier tokens coarsen everyone's quantization.
No calibration data is needed.

On CUDA the GEMM is ``torch._scaled_mm`` with row-wise scales (scale_a (M, 1), scale_b (1, N),
both float32). Its output is bfloat16: torch 2.9.1 built for CUDA 12.8 (the image's pin) sends
row-wise scaling to a CUTLASS kernel that outputs bfloat16 only ("Only bf16 high precision
output types are supported for row-wise scaling", ``_scaled_mm_out_cuda`` in
aten/src/ATen/native/cuda/Blas.cpp, ScaledBlas.cpp in later versions). Newer torch adds float16
(CUTLASS) and float32 (cuBLAS >= 12.9 on sm90) outputs and keeps the same ``_scaled_mm(self,
mat2, scale_a, scale_b, bias, scale_result, out_dtype, use_fast_accum)`` schema beside
``torch.nn.functional.scaled_mm`` (2.10+). bfloat16 works on every version and has float32's
range, so no GEMM output can overflow; the callers upcast it for the float32 residual.

Row-wise FP8 GEMMs with a large K and M <= 256 have been reported to fail on H100 with
CUBLAS_STATUS_NOT_SUPPORTED (pytorch/ao#4582, the cuBLAS path of newer torch): activations
with fewer rows are padded with zero rows to :data:`MIN_ROWS`. With per-token scales a zero row
changes no other row, and a GEMM of so few rows is bound by reading the weights anyway.

CPU kernels of ``_scaled_mm`` take per-tensor scales only, so tests run an exact emulation
(``emulate=True``): the e4m3 operands multiplied in float64, where every product and partial
sum is an integer multiple of 2^-18 below 2^53 (|q| <= 448 = 2^8.8, K <= 2^14 on Qwen3 8B),
i.e. exact in any summation order; then the per-token and per-channel scales and the bfloat16
rounding of the output, as the kernel's epilogue does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max
MIN_ROWS = 272  # > 256 (see the module docstring), a multiple of 16
OUT_DTYPE = torch.bfloat16  # the row-wise output dtype every torch version supports
MIN_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (L4, L40S), Hopper (H100, H200) and newer
_TINY = 1e-12  # an all-zero row gets this amax, so its scale is not zero


class FP8UnsupportedError(RuntimeError):
    """FP8 was asked for on a device without FP8 tensor cores."""


def unsupported_reason(device: torch.device | str, capability: tuple[int, int] | None = None):
    """Why ``device`` cannot run the FP8 GEMMs, as the end of a sentence, or None if it can.

    ``capability`` defaults to the device's own (a parameter so that the rule can be checked
    without the GPU it describes).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return f"the model would run on {device}"
    if not hasattr(torch, "_scaled_mm"):
        return f"torch {torch.__version__} has no torch._scaled_mm"
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
    if tuple(capability) < MIN_CAPABILITY:
        return f"{device} has compute capability {capability[0]}.{capability[1]}"
    return None


def requirement(reason: str, label: str = "quantization") -> str:
    """The one line a deployer sees when FP8 cannot run (``label``: what they set)."""
    need = ".".join(map(str, MIN_CAPABILITY))
    return (
        f"{label}=fp8 needs a CUDA device with FP8 tensor cores (compute "
        f"capability {need}+: L4, L40S, H100, H200), but {reason}; use none"
    )


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of a 2-D tensor as e4m3 values and a float32 scale: ``x ~ q * scale``.

    The scale maps the row's largest magnitude to 448 (e4m3's largest finite value); the
    clamp only catches the last-bit rounding of ``amax / scale`` (casts past 448 become NaN).
    """
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp(min=_TINY) / E4M3_MAX
    q = (xf / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return q, scale


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An (N, K) weight as e4m3 values and one float32 scale per output channel, shape (N,)."""
    q, scale = quantize_rows(w)
    return q, scale.squeeze(-1).contiguous()


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 ``q * scale`` (per-row scales), for the float32-activation safe mode."""
    return q.float() * scale.view(-1, 1)


def linear(
    x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, *, emulate: bool = False
) -> torch.Tensor:
    """``x @ W.T`` in bfloat16 from a weight quantized by :func:`quantize_weight`, with ``x``
    (M, K) quantized per row here."""
    m = x.shape[0]
    if m < MIN_ROWS:
        x = F.pad(x, (0, 0, 0, MIN_ROWS - m))
    xq, x_scale = quantize_rows(x)
    if emulate:
        acc = (xq.double() @ wq.double().t()).float()
        y = (acc * x_scale * w_scale.view(1, -1)).to(OUT_DTYPE)
    else:
        y = torch._scaled_mm(
            xq, wq.t(), scale_a=x_scale, scale_b=w_scale.view(1, -1), out_dtype=OUT_DTYPE
        )
    return y[:m]
