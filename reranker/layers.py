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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn


class Linear(NamedTuple):
    """One GEMM's operands: ``y = x @ weight.T + bias``."""

    weight: torch.Tensor  # (N, K)
    bias: torch.Tensor | None


def prepare_layers(layers: Sequence[nn.Module]) -> list[tuple[tuple, tuple]]:
    """Per layer, the argument tuples of ``attention_inputs`` and ``attention_output_and_mlp``
    (after the activations): fused q/k/v and gate/up weights, built once here."""
    return [_prepare_layer(layer) for layer in layers]


def _prepare_layer(layer: nn.Module) -> tuple[tuple, tuple]:
    a, m = layer.self_attn, layer.mlp
    sizes = (a.q_proj.weight.shape[0], a.k_proj.weight.shape[0], a.v_proj.weight.shape[0])
    pre = (
        layer.input_layernorm.weight,
        fuse_rows([a.q_proj, a.k_proj, a.v_proj]),
        a.q_norm.weight,
        a.k_norm.weight,
        sizes,
    )
    post = (
        Linear(a.o_proj.weight, a.o_proj.bias),
        layer.post_attention_layernorm.weight,
        fuse_rows([m.gate_proj, m.up_proj]),
        Linear(m.down_proj.weight, m.down_proj.bias),
    )
    return pre, post


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
