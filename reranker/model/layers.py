"""Each decoder layer's weights in the form the layer functions take them.

The q, k and v projections read the same normed input, and so do gate and up: each group runs
as one GEMM over its weights concatenated along the output dimension (N = 4096 + 1024 + 1024
and N = 2 x 12288 on the 8B, as vLLM's Qwen3 does). That is the same arithmetic per output
element with fewer, larger launches.

The concatenation happens once, at load, and replaces the per-projection weights instead of
adding to them: the Hugging Face module's parameters are re-pointed to row slices (views) of
the fused tensor, so the old tensors are freed and the model still runs its own ``forward``
on the same memory (the benchmark's recipe engines share the model with the scorer). Fusing a
model whose projections already are adjacent views of one tensor (a second scorer on the same
model) reuses that tensor instead of copying it again.

With ``quantization="fp8"`` (:mod:`reranker.model.fp8`) every GEMM that runs over all tokens of a
pass is quantized once here: every projection of every layer but the last, and the last
layer's q/k/v. The last layer's output projection and MLP run after the last-token gather
(M = segments in the pass, K up to 12,288): they stay 16-bit, where FP8 gains nothing and small
M is the shape row-wise FP8 kernels handle worst. The quantized layers' 16-bit weights are
dropped (the modules' ``weight`` becomes None), so weight memory about halves and the model
object can no longer run its own ``forward``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from .fp8 import quantize_weight

QUANTIZATIONS = ("none", "fp8", "fp8-emulated")  # fp8-emulated: exact CPU emulation, for tests


class Linear(NamedTuple):
    """One GEMM's operands: ``y = x @ weight.T + bias``; a float8 weight has ``scale``."""

    weight: torch.Tensor  # (N, K)
    bias: torch.Tensor | None
    scale: torch.Tensor | None = None  # (N,) float32 per output channel, for float8 weights


def prepare_layers(
    layers: Sequence[nn.Module], quantization: str = "none"
) -> list[tuple[tuple, tuple]]:
    """Per layer, the argument tuples of ``attention_inputs`` and ``attention_output_and_mlp``
    (after the activations): fused q/k/v and gate/up weights, quantized if asked, built once
    here."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}")
    if any(layer.self_attn.q_proj.weight is None for layer in layers):
        raise ValueError("the model's weights were already quantized by another scorer")
    fp8 = quantization != "none"
    if quantization == "fp8":  # torch._scaled_mm needs K and N to be multiples of 16
        a, m = layers[0].self_attn, layers[0].mlp
        dims = {*a.q_proj.weight.shape, *a.k_proj.weight.shape, *m.up_proj.weight.shape}
        if any(d % 16 for d in dims):
            raise ValueError(f"FP8 GEMMs need dimensions divisible by 16, not {sorted(dims)}")
    last = len(layers) - 1
    return [
        _prepare_layer(layer, qkv_fp8=fp8, rest_fp8=fp8 and i < last)
        for i, layer in enumerate(layers)
    ]


def _prepare_layer(layer: nn.Module, *, qkv_fp8: bool, rest_fp8: bool) -> tuple[tuple, tuple]:
    a, m = layer.self_attn, layer.mlp
    sizes = (a.q_proj.weight.shape[0], a.k_proj.weight.shape[0], a.v_proj.weight.shape[0])
    qkv = [a.q_proj, a.k_proj, a.v_proj]
    pre = (
        layer.input_layernorm.weight,
        _maybe_fp8(qkv, fuse_rows(qkv), qkv_fp8),
        a.q_norm.weight,
        a.k_norm.weight,
        sizes,
    )
    gate_up = [m.gate_proj, m.up_proj]
    post = (
        _maybe_fp8([a.o_proj], Linear(a.o_proj.weight, a.o_proj.bias), rest_fp8),
        layer.post_attention_layernorm.weight,
        _maybe_fp8(gate_up, fuse_rows(gate_up), rest_fp8),
        _maybe_fp8([m.down_proj], Linear(m.down_proj.weight, m.down_proj.bias), rest_fp8),
    )
    return pre, post


def _maybe_fp8(modules: Sequence[nn.Linear], lin: Linear, fp8: bool) -> Linear:
    """``lin`` with its weight quantized per output channel, the modules' 16-bit weights
    dropped (the fused tensor goes with them); or ``lin`` as it is."""
    if not fp8:
        return lin
    weight, scale = quantize_weight(lin.weight.detach())
    for mod in modules:
        mod.weight = None
    return Linear(weight, lin.bias, scale)


def fuse_rows(modules: Sequence[nn.Linear]) -> Linear:
    """The modules' weights stacked along the output dimension, as one :class:`Linear`.

    The modules' weight parameters become views of the fused tensor (module docstring).
    """
    weights = [mod.weight.detach() for mod in modules]
    rows = sum(w.shape[0] for w in weights)
    if _adjacent(weights):
        fused = weights[0].as_strided((rows, weights[0].shape[1]), weights[0].stride())
    else:
        fused = torch.cat(weights)
        start = 0
        for mod, w in zip(modules, weights, strict=True):
            view = fused[start : start + w.shape[0]]
            mod.weight = nn.Parameter(view, requires_grad=False)
            start += w.shape[0]
    return Linear(fused, _fused_bias(modules, fused))


def _adjacent(weights: Sequence[torch.Tensor]) -> bool:
    """Whether the (N_i, K) tensors already lie one after another in one storage, row-major."""
    first = weights[0]
    offset = first.storage_offset()
    for w in weights:
        same = (w.device, w.dtype, w.shape[1:]) == (first.device, first.dtype, first.shape[1:])
        if not (same and w.is_contiguous() and w.storage_offset() == offset):
            return False
        if w.untyped_storage().data_ptr() != first.untyped_storage().data_ptr():
            return False
        offset += w.numel()
    return True


def _fused_bias(modules: Sequence[nn.Linear], fused: torch.Tensor) -> torch.Tensor | None:
    """Biases are small: concatenated (a missing one as zeros), never shared with the modules."""
    if all(mod.bias is None for mod in modules):
        return None
    parts = [
        mod.bias.detach() if mod.bias is not None else fused.new_zeros(mod.weight.shape[0])
        for mod in modules
    ]
    return torch.cat(parts)
