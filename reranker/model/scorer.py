"""Packed token ids -> hidden states -> yes-minus-no logits.

The Qwen3 decoder is run with its own modules (norms, projections, MLP, rotary embedding),
but the loop over layers is ours so that a pass can

* pack segments without padding and attend per segment (see :mod:`reranker.model.attention`),
* continue a cached context (the request's shared prompt prefix),
* keep only the last token of each segment after the final attention,
* and never build full-vocabulary logits: the score needs one float32 row,
  ``lm_head[yes] - lm_head[no]``, since softmax([no, yes])[1] = sigmoid(h . (W_yes - W_no)).

float16 has the range of neither the residual stream nor every GEMM output: Qwen3 was trained
in bfloat16, and LLM residual streams carry a few "massive activation" channels that can pass
65,504. So a float16 model runs with :data:`FLOAT32_RESIDUAL` numerics: weights and GEMM
inputs stay 16-bit (the tensor cores' speed), while the residual stream, every GEMM output and
the norms are float32 (see :class:`Numerics`). A segment that still overflows is re-scored by
:meth:`QwenScorer.safe_logits` with float32 activations throughout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from . import fp8
from .attention import Backend, SdpaAttention, select_backend
from .layers import Linear, prepare_layers
from .packing import PackedBatch

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """A forward pass produced inf/NaN, even with float32 activations."""


class UnsupportedModelError(ValueError):
    """The checkpoint is not a Qwen3 causal LM this engine can score with."""


@dataclass(frozen=True)
class ContextKV:
    """Keys and values of a cached context: ``(layers, tokens, kv_heads, head_dim)`` each,
    and its token ids (to re-run a continuation from scratch in the safe mode)."""

    k: torch.Tensor
    v: torch.Tensor
    ids: tuple[int, ...] = ()

    @property
    def num_tokens(self) -> int:
        return int(self.k.shape[1])


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
        compile: bool | None = None,
        numerics: str = "auto",
        quantization: str = "none",
        capability: tuple[int, int] | None = None,
    ) -> None:
        """``capability``: the GPU's compute capability for the FP8 check (None: ask
        ``torch.cuda``; see :func:`reranker.model.fp8.unsupported_reason`)."""
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
        if quantization == "fp8" and (reason := fp8.unsupported_reason(self.device, capability)):
            raise fp8.FP8UnsupportedError(fp8.requirement(reason))
        self.norm_weight = core.norm.weight.detach().float()
        vocab = hf_model.get_output_embeddings().weight
        if max(yes_id, no_id) >= vocab.shape[0]:
            raise UnsupportedModelError("the yes/no token ids are outside the model's vocabulary")
        self.head = (vocab[yes_id].detach().float() - vocab[no_id].detach().float()).contiguous()
        self.norm_eps = float(config.rms_norm_eps)
        # fused q/k/v and gate/up; FP8 if asked (reranker.layers)
        started = time.perf_counter()
        self.layer_weights = prepare_layers(self.layers, quantization)
        if self.device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.synchronize(self.device)
        #: seconds of this scorer's setup steps (the setup log line reports them; the engine's
        #: warm-up adds ``compile`` and ``warmup``)
        self.setup_seconds: dict[str, float] = {"fusion": time.perf_counter() - started}
        self.quantization = quantization
        if numerics == "auto":  # float16 lacks the residual stream's range (module docstring)
            numerics = FLOAT32_RESIDUAL.name if self.dtype == torch.float16 else NATIVE.name
        if numerics not in NUMERICS:
            raise ValueError(f"numerics must be auto or one of {', '.join(NUMERICS)}")
        self.numerics = NUMERICS[numerics]
        if quantization != "none":
            self.numerics = replace(self.numerics, fp8_emulated=quantization == "fp8-emulated")
        self._pre, self._post = attention_inputs, attention_output_and_mlp
        if compile is None:
            compile = self.device.type == "cuda"
        self.compiled = compile
        if compile:
            # One graph per function serves all layers (weights are arguments); dynamic shapes
            # so that passes of any size reuse it. Falls back to eager if compilation fails.
            self._pre = CompiledOrEager(attention_inputs)
            self._post = CompiledOrEager(attention_output_and_mlp)
        self._model = hf_model  # keeps the weights alive; never changed here
        started = time.perf_counter()
        self.attention: Backend = select_backend(
            attention,
            heads=self.num_heads,
            kv_heads=self.num_kv_heads,
            dim=self.head_dim,
            device=self.device,
            dtype=self.dtype,
        )
        self.setup_seconds["attention"] = time.perf_counter() - started  # its self-check
        self._safe_attention = None  # built on first use: most deployments never need it

    # -- public --------------------------------------------------------------------------

    @torch.inference_mode()
    def logits(self, batch: PackedBatch, contexts: Sequence[ContextKV] = ()) -> torch.Tensor:
        """float32 log-odds ``logit_yes - logit_no`` at the last token of every segment.

        Segments are independent: an overflow in one leaves the others finite, so callers check
        finiteness per request (the scheduler does).
        """
        last = self._run(batch, contexts, None, self.numerics, self.attention)
        return self._head(last)

    @property
    def can_rescore(self) -> bool:
        """Whether :meth:`safe_logits` computes anything :meth:`logits` does not."""
        return self.dtype != torch.float32

    @torch.inference_mode()
    def safe_logits(self, batch: PackedBatch) -> torch.Tensor:
        """:meth:`logits` with every activation in float32 (weights upcast per GEMM, float32
        attention): slower, for the rare segment whose 16-bit pass overflowed. Contexts are
        not continued: their keys and values were made in 16-bit."""
        if any(c is not None for c in batch.contexts):
            raise ValueError("the safe mode runs whole prompts, not continuations")
        if self._safe_attention is None:
            # on CUDA repeated KV heads keep SDPA off its L x L math kernel (see attention)
            native = self.device.type != "cuda"
            groups = self.num_heads // self.num_kv_heads
            self._safe_attention = SdpaAttention(kv_groups=groups, native_gqa=native)
        eager = (attention_inputs, attention_output_and_mlp)
        last = self._run(batch, (), None, FLOAT32, self._safe_attention, eager)
        return self._head(last)

    def _head(self, last: torch.Tensor) -> torch.Tensor:
        return rms_norm(last.float(), self.norm_weight, self.norm_eps) @ self.head

    @torch.inference_mode()
    def contexts(self, batch: PackedBatch) -> list[ContextKV]:
        """Run each segment as a context to be continued later; returns its keys and values."""
        if any(c is not None for c in batch.contexts):
            raise ValueError("a context cannot itself continue a context")
        captured: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._run(batch, (), captured, self.numerics, self.attention)
        out = []
        for start, n in zip(batch.starts, batch.lengths, strict=True):
            # each context copied out on its own: no pass-sized stack of every layer at once
            k = torch.stack([kv[0][start : start + n] for kv in captured])
            v = torch.stack([kv[1][start : start + n] for kv in captured])
            out.append(ContextKV(k, v))
        return out

    def blank_context(self, num_tokens: int) -> ContextKV:
        """A cached context of ``num_tokens`` zeros: the device memory that many cached prefix
        tokens take (the warm-up holds and continues it)."""
        shape = (len(self.layers), num_tokens, self.num_kv_heads, self.head_dim)
        k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        return ContextKV(k, torch.zeros_like(k))

    @property
    def kv_bytes_per_token(self) -> int:
        """Device memory one cached context token takes (keys and values of every layer)."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 2 * len(self.layers) * self.num_kv_heads * self.head_dim * itemsize

    # -- the layer loop ------------------------------------------------------------------

    def _run(
        self,
        batch: PackedBatch,
        contexts: Sequence[ContextKV],
        capture,
        nx: Numerics,
        attention: Backend,
        layer_fns=None,
    ) -> torch.Tensor:
        pre_fn, post_fn = layer_fns or (self._pre, self._post)
        h = self.embed(batch.input_ids)
        if nx.residual is not None:
            h = h.to(nx.residual)
        cos, sin = self.rotary(h, batch.positions.unsqueeze(0))  # in h's dtype
        cos, sin = cos[0], sin[0]
        plan = attention.prepare(batch)
        pool = None
        if contexts:
            pool_k = torch.cat([c.k for c in contexts], dim=1)
            pool_v = torch.cat([c.v for c in contexts], dim=1)
        last_layer = len(self.layers) - 1
        for i, (pre, post) in enumerate(self.layer_weights):
            q, k, v = pre_fn(h, *pre, cos, sin, self.norm_eps, nx)
            if capture is not None:
                capture.append((k, v))
                if i == last_layer:
                    return h  # the last layer's output is not needed to continue a context
            if contexts:
                pool = (pool_k[i], pool_v[i])
            o = attention(q, k, v, plan, pool)
            del q, k, v
            if i == last_layer:  # only the last token of each segment is read
                h, o = h[batch.last_index], o[batch.last_index]
            h = post_fn(h, o, *post, self.norm_eps, nx)
            del o
        return h


class CompiledOrEager:
    """``torch.compile(fn)``, or ``fn`` itself once compilation has failed (logged once)."""

    def __init__(self, fn, **options) -> None:
        """``options`` go to ``torch.compile`` beside ``dynamic=True`` (tests add
        ``fullgraph=True``: tests/test_fake_cuda.py)."""
        self.fn = fn
        self.compiled = torch.compile(fn, **{"dynamic": True, **options})
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


# -- numerics: where values are rounded, and how wide the residual stream is -------------------


@dataclass(frozen=True)
class Numerics:
    """How activations meet the weights.

    ``native``: the recipe's own rounding, every activation in the weights' dtype (float32
    and bfloat16 models: bfloat16 has float32's range). ``float32-residual``: the residual
    stream, norms and GEMM outputs in float32; each GEMM input row is scaled by a power of two
    that brings its largest magnitude to 2^14-2^15 before the cast to 16-bit (exact: scaling
    by 2^k commutes with rounding), so a row can neither overflow nor lose its small entries
    to float16's subnormals (next to a massive activation the other channels of a normed row
    sit near 1e-4); q/k/v are cast to 16-bit for the attention kernel (q and k are RMS-normed;
    v is the one input left that could overflow, and such a segment goes to the safe mode).
    ``float32``: every activation in float32, weights upcast per GEMM (the safe mode).

    A float8 weight (``RERANKER_QUANTIZATION=fp8``, :mod:`reranker.model.fp8`) meets activations
    quantized per token; its bfloat16 output is upcast to float32 (``wide``) or cast to the
    activations' dtype (``native``). The safe mode multiplies float32 activations by the
    dequantized weight.
    """

    name: str
    residual: torch.dtype | None  # None: the weights' dtype
    gemm: str  # native | wide | float32
    fp8_emulated: bool = False  # float8 GEMMs by the exact emulation (tests), not _scaled_mm

    def linear(self, x: torch.Tensor, lin: Linear) -> torch.Tensor:
        w, b, scale = lin
        if scale is not None:  # a float8 weight
            if self.gemm == "float32":
                b32 = None if b is None else b.float()
                return F.linear(x.float(), fp8.dequantize(w, scale), b32)
            y = fp8.linear(x, w, scale, emulate=self.fp8_emulated)
            y = y.float() if self.gemm == "wide" else y.to(x.dtype)
            return y if b is None else y + b.to(y.dtype)
        if self.gemm == "native":
            return F.linear(x, w, b)
        if self.gemm == "float32":
            return F.linear(x.float(), w.float(), None if b is None else b.float())
        y = wide_linear(x, w)
        return y if b is None else y + b.float()

    def norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        if self.gemm == "native":
            return rms_norm(x, weight, eps)
        return weight.float() * _normalized(x, eps)

    def attention_input(self, x: torch.Tensor, weight_dtype: torch.dtype) -> torch.Tensor:
        return x if self.gemm == "float32" else x.to(weight_dtype)


NATIVE = Numerics("native", None, "native")
FLOAT32_RESIDUAL = Numerics("float32-residual", torch.float32, "wide")
FLOAT32 = Numerics("float32", torch.float32, "float32")
NUMERICS = {n.name: n for n in (NATIVE, FLOAT32_RESIDUAL, FLOAT32)}

# Each GEMM input row is scaled by a power of two to a largest magnitude in (2^14, 2^15]
# before the cast to 16-bit: float16's largest finite value is 65,504 (2^15 leaves headroom
# for rounding) and its subnormals start below 6.1e-5. The exponent is bounded so that an
# all-zero row stays zero; a NaN row stays NaN (and is caught by the finiteness check).
_CAST_LIMIT = 2.0**15
_MIN_EXPONENT = -40.0


def wide_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w.T`` with 16-bit inputs and a float32 output, for activations of any size.

    On CUDA the GEMM writes float32 directly (``bmm(..., out_dtype=float32)``: torch 2.9.1's
    meta kernel for ``aten.mm.dtype`` rejects ``out_dtype``, so ``mm`` cannot be traced by
    torch.compile, while ``aten.bmm.dtype`` has a meta kernel and an inductor lowering,
    ``torch/_inductor/kernel/bmm.py`` ``aten_bmm_dtype``). CPU kernels have no ``out_dtype``:
    there the 16-bit inputs are upcast exactly and multiplied in float32, which is what a
    float32-accumulating 16-bit GEMM computes.
    """
    amax = x.detach().abs().amax(-1, keepdim=True).float()
    scale = torch.exp2(torch.ceil(torch.log2(amax / _CAST_LIMIT)).clamp(min=_MIN_EXPONENT))
    x16 = (x.float() / scale).to(w.dtype)
    if x.device.type == "cuda":
        y = torch.bmm(x16.unsqueeze(0), w.t().unsqueeze(0), out_dtype=torch.float32)[0]
    else:
        y = F.linear(x16.float(), w.float())
    return y * scale


# -- one decoder layer, as pure functions of its weights ---------------------------------------
# The same math as transformers' Qwen3DecoderLayer (RMSNorm in float32, rotate-half RoPE,
# SiLU-gated MLP), written over tensors so that one compiled graph serves every layer; ``nx``
# says where values are rounded (:class:`Numerics`).


def _normalized(x: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Qwen3RMSNorm: normalized in float32, rounded to x's dtype, then scaled."""
    return weight * _normalized(x, eps).to(x.dtype)


def attention_inputs(h, ln, qkv, qn, kn, sizes, cos, sin, eps: float, nx: Numerics):
    """input norm -> fused q/k/v projection -> per-head q/k norms -> rotary: (T, heads, dim).

    ``qkv`` holds the three weights stacked along N, ``sizes`` their output widths."""
    t, dim = h.shape[0], qn.shape[0]
    x = nx.norm(h, ln, eps)
    q, k, v = nx.linear(x, qkv).split(sizes, dim=-1)
    q = nx.norm(q.reshape(t, -1, dim), qn, eps)
    k = nx.norm(k.reshape(t, -1, dim), kn, eps)
    v = v.reshape(t, -1, dim)
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    # v is a column slice of the fused output: contiguous for the attention kernels
    return tuple(nx.attention_input(y, ln.dtype).contiguous() for y in (q, k, v))


def attention_output_and_mlp(h, o, wo, ln, gate_up, down, eps: float, nx: Numerics):
    """output projection + residual -> post-attention norm -> fused gate/up -> SiLU-gated MLP
    + residual."""
    h = h + nx.linear(o.flatten(1), wo)
    gate, up = nx.linear(nx.norm(h, ln, eps), gate_up).chunk(2, dim=-1)
    return h + nx.linear(F.silu(gate) * up, down)
