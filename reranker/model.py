"""Packed token ids -> hidden states -> yes-minus-no logits.

The Qwen3 decoder is run with its own modules (norms, projections, MLP, rotary embedding),
but the loop over layers is ours so that a pass can

* pack segments without padding and attend per segment (see :mod:`reranker.attention`),
* continue a cached context (the request's shared prompt prefix),
* keep only the last token of each segment after the final attention,
* and never build full-vocabulary logits: the score needs one float32 row,
  ``lm_head[yes] - lm_head[no]``, since softmax([no, yes])[1] = sigmoid(h . (W_yes - W_no)).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention import Backend, select_backend
from .packing import PackedBatch

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """A forward pass produced inf/NaN (float16 overflow on real weights)."""


class UnsupportedModelError(ValueError):
    """The checkpoint is not a Qwen3 causal LM this engine can score with."""


@dataclass(frozen=True)
class ContextKV:
    """Keys and values of a cached context: ``(layers, tokens, kv_heads, head_dim)`` each."""

    k: torch.Tensor
    v: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.k.shape[1])


def _layer_weights(layer) -> tuple[tuple, tuple]:
    a, m = layer.self_attn, layer.mlp
    pre = (
        layer.input_layernorm.weight,
        a.q_proj.weight,
        a.q_proj.bias,
        a.k_proj.weight,
        a.k_proj.bias,
        a.v_proj.weight,
        a.v_proj.bias,
        a.q_norm.weight,
        a.k_norm.weight,
    )
    post = (
        a.o_proj.weight,
        a.o_proj.bias,
        layer.post_attention_layernorm.weight,
        m.gate_proj.weight,
        m.up_proj.weight,
        m.down_proj.weight,
    )
    return pre, post


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on (T, H, D) with per-token (T, D) tables (rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)


class QwenScorer:
    """A loaded Qwen3ForCausalLM turned into a scoring function over packed batches."""

    def __init__(
        self,
        hf_model,
        *,
        yes_id: int,
        no_id: int,
        attention: str = "auto",
        release_lm_head: bool = True,
        compile: bool | None = None,
    ) -> None:
        config = hf_model.config
        if getattr(config, "model_type", None) != "qwen3":
            raise UnsupportedModelError(
                f"expected a Qwen3 checkpoint (model_type 'qwen3'), got "
                f"{getattr(config, 'model_type', None)!r}"
            )
        if "sliding_attention" in (getattr(config, "layer_types", None) or []):
            raise UnsupportedModelError("sliding-window attention layers are not supported")
        if getattr(config, "hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"MLP activation {config.hidden_act!r} (expected silu)")
        core = hf_model.model
        self.embed = core.embed_tokens
        self.layers = list(core.layers)
        self.rotary = core.rotary_emb
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = self.layers[0].self_attn.head_dim
        if abs(self.layers[0].self_attn.scaling - self.head_dim**-0.5) > 1e-12:
            raise UnsupportedModelError("attention scaling other than 1/sqrt(head_dim)")
        self.device = self.embed.weight.device
        self.dtype = self.embed.weight.dtype
        self.norm_weight = core.norm.weight.detach().float()
        vocab = hf_model.get_output_embeddings().weight
        if max(yes_id, no_id) >= vocab.shape[0]:
            raise UnsupportedModelError("the yes/no token ids are outside the model's vocabulary")
        self.head = (vocab[yes_id].detach().float() - vocab[no_id].detach().float()).contiguous()
        if release_lm_head and not config.tie_word_embeddings:
            hf_model.lm_head = None  # 1.2 GB on the 8B model that scoring never reads
        self.norm_eps = float(config.rms_norm_eps)
        self.layer_weights = [_layer_weights(layer) for layer in self.layers]
        self._pre, self._post = attention_inputs, attention_output_and_mlp
        if compile is None:
            compile = self.device.type == "cuda"
        self.compiled = compile
        if compile:
            # One graph per function serves all layers (weights are arguments); dynamic shapes
            # so that passes of any size reuse it. Falls back to eager if compilation fails.
            self._pre = CompiledOrEager(attention_inputs)
            self._post = CompiledOrEager(attention_output_and_mlp)
        self._model = hf_model.eval().requires_grad_(False)
        self.attention: Backend = select_backend(
            attention,
            heads=self.num_heads,
            kv_heads=self.num_kv_heads,
            dim=self.head_dim,
            device=self.device,
            dtype=self.dtype,
        )

    # -- public --------------------------------------------------------------------------

    @torch.inference_mode()
    def logits(self, batch: PackedBatch, contexts: Sequence[ContextKV] = ()) -> torch.Tensor:
        """float32 log-odds ``logit_yes - logit_no`` at the last token of every segment.

        Segments are independent: an overflow in one leaves the others finite, so callers check
        finiteness per request (:meth:`check_finite`).
        """
        last = self._run(batch, contexts, capture=None)
        return rms_norm(last.float(), self.norm_weight, self.norm_eps) @ self.head

    @torch.inference_mode()
    def contexts(self, batch: PackedBatch) -> list[ContextKV]:
        """Run each segment as a context to be continued later; returns its keys and values."""
        if any(c is not None for c in batch.contexts):
            raise ValueError("a context cannot itself continue a context")
        captured: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._run(batch, (), capture=captured)
        k = torch.stack([kv[0] for kv in captured])
        v = torch.stack([kv[1] for kv in captured])
        out = []
        for start, n in zip(batch.starts, batch.lengths, strict=True):
            out.append(ContextKV(k[:, start : start + n].clone(), v[:, start : start + n].clone()))
        return out

    def check_finite(self, logits: Sequence[float]) -> None:
        """Raise :class:`NonFiniteError` if any logit is inf/NaN (checked per request)."""
        if not all(math.isfinite(x) for x in logits):
            raise NonFiniteError(
                f"the model produced non-finite values in {str(self.dtype).removeprefix('torch.')}"
                " (numeric overflow); load it in bfloat16 (RERANKER_DTYPE=bfloat16) or float32"
            )

    # -- the layer loop ------------------------------------------------------------------

    def _run(self, batch: PackedBatch, contexts: Sequence[ContextKV], capture) -> torch.Tensor:
        h = self.embed(batch.input_ids)
        cos, sin = self.rotary(h, batch.positions.unsqueeze(0))
        cos, sin = cos[0], sin[0]
        plan = self.attention.prepare(batch)
        pool = None
        if contexts:
            pool_k = torch.cat([c.k for c in contexts], dim=1)
            pool_v = torch.cat([c.v for c in contexts], dim=1)
        last_layer = len(self.layers) - 1
        for i, (pre, post) in enumerate(self.layer_weights):
            q, k, v = self._pre(h, *pre, cos, sin, self.norm_eps)
            if capture is not None:
                capture.append((k, v))
                if i == last_layer:
                    return h  # the last layer's output is not needed to continue a context
            if contexts:
                pool = (pool_k[i], pool_v[i])
            o = self.attention(q, k, v, plan, pool)
            del q, k, v
            if i == last_layer:  # only the last token of each segment is read
                h, o = h[batch.last_index], o[batch.last_index]
            h = self._post(h, o, *post, self.norm_eps)
            del o
        return h


class CompiledOrEager:
    """``torch.compile(fn)``, or ``fn`` itself once compilation has failed (logged once)."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.compiled = torch.compile(fn, dynamic=True)
        self.failed = False

    def __call__(self, *args):
        if not self.failed:
            try:
                return self.compiled(*args)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # compiler or toolchain trouble: eager is always correct
                log.warning(
                    "torch.compile of %s failed (%s); running eagerly", self.fn.__name__, exc
                )
                self.failed = True
        return self.fn(*args)


# -- one decoder layer, as pure functions of its weights ---------------------------------------
# The same math as transformers' Qwen3DecoderLayer (RMSNorm in float32, rotate-half RoPE,
# SiLU-gated MLP), written over tensors so that one compiled graph serves every layer.


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def attention_inputs(h, ln, wq, bq, wk, bk, wv, bv, qn, kn, cos, sin, eps: float):
    """input norm -> q, k, v projections -> per-head q/k norms -> rotary: (T, heads, dim)."""
    t, dim = h.shape[0], qn.shape[0]
    x = rms_norm(h, ln, eps)
    q = rms_norm(F.linear(x, wq, bq).view(t, -1, dim), qn, eps)
    k = rms_norm(F.linear(x, wk, bk).view(t, -1, dim), kn, eps)
    v = F.linear(x, wv, bv).view(t, -1, dim)
    return _rotate(q, cos, sin), _rotate(k, cos, sin), v


def attention_output_and_mlp(h, o, wo, bo, ln, wg, wu, wd, eps: float):
    """output projection + residual -> post-attention norm -> SiLU-gated MLP + residual."""
    h = h + F.linear(o.flatten(1), wo, bo)
    x = rms_norm(h, ln, eps)
    return h + F.linear(F.silu(F.linear(x, wg)) * F.linear(x, wu), wd)
