"""Where the model runs: one device per replica and the dtype, decided once for every caller.

``Reranker.load`` and the service both come here. Each names the fields as its user knows them
(``label``): the library says ``device``, the service ``RERANKER_DEVICE``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import DTYPE_NAMES, check_choice, check_device_name
from ..model import fp8


@dataclass(frozen=True)
class Placement:
    devices: tuple[torch.device, ...]  # one per replica
    dtype: torch.dtype


def _same(field: str) -> str:
    return field


def resolve_placement(
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    replicas: int | None = 1,
    attention: str = "auto",
    quantization: str = "none",
    label: Callable[[str], str] = _same,
    gpus: int | None = None,
    capability: tuple[int, int] | None = None,
) -> Placement:
    """Devices and dtype; raises ``ValueError`` naming the field (through ``label``).

    ``device`` None: every visible GPU in turn (``replicas`` None: one replica per GPU), else
    the CPU. ``dtype`` None: float16 on CUDA (the design's choice), float32 on CPU.

    ``gpus`` (visible GPUs) and ``capability`` (their compute capability) default to what
    ``torch.cuda`` reports; parameters so that the rule can be checked, and a model placed on
    fake CUDA tensors (tests/test_fake_cuda.py), without the GPU they describe.
    """
    if gpus is None:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if isinstance(device, torch.device):
        device = str(device)
    if device:
        check_device_name(label("device"), device)
        if device.startswith("cuda") and not gpus:
            raise ValueError(f"{label('device')}={device}, but this machine has no usable CUDA")
        names = [device] * (replicas or 1)
    elif gpus:
        names = [f"cuda:{i % gpus}" for i in range(replicas or gpus)]
    else:
        names = ["cpu"] * (replicas or 1)
    devices = tuple(torch.device(n) for n in names)
    if attention == "varlen" and devices[0].type != "cuda":
        raise ValueError(
            f"{label('attention')}=varlen needs a CUDA device (FlashAttention), but the model "
            f"would run on {devices[0]}; use auto or sdpa"
        )
    if quantization == "fp8":
        for d in dict.fromkeys(devices):
            if reason := fp8.unsupported_reason(d, capability):
                raise ValueError(fp8.requirement(reason, label("quantization")))
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if not dtype:
        dtype = "float16" if devices[0].type == "cuda" else "float32"
    check_choice(label("dtype"), dtype, DTYPE_NAMES)
    return Placement(devices, getattr(torch, dtype))
