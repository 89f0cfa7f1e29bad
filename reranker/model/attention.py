"""Causal attention over a packed batch whose segments may continue cached contexts.

Every segment attends to its context (all of it) and causally to its own new tokens: new
token ``j`` sees context keys ``0..C-1`` and new keys ``0..j``, i.e. a causal mask aligned
to the bottom-right corner when ``C > 0``.

Two backends:

* :class:`VarlenAttention` (CUDA): one FlashAttention-2 varlen call for the whole pass, no
  padding anywhere. Uses ``torch.nn.attention.varlen.varlen_attn`` where the installed torch
  has it (2.10+), else the ATen op it wraps (present since 2.1). Which one, and whether it
  accepts grouped KV heads, is decided at load by :func:`select_backend`, which checks the
  kernel against a float32 reference before trusting it.
* :class:`SdpaAttention` (everywhere): segments grouped by context and by length, padded on
  the right within a group only, and run through ``scaled_dot_product_attention``. Right
  padding needs no padding mask: a real token never sees a later (pad) key.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from .packing import PackedBatch

log = logging.getLogger(__name__)

# (q, k, v, cu_seq_q, cu_seq_k, max_q, max_k) -> out, causal aligned bottom-right.
VarlenKernel = Callable[..., torch.Tensor]


def _context_offsets(batch: PackedBatch) -> list[int]:
    return [0, *torch.tensor(batch.context_lengths or [0]).cumsum(0).tolist()]


# ----------------------------------------------------------------------------------------
# Varlen (FlashAttention) backend
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VarlenPlan:
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    max_q: int
    max_k: int
    k_index: torch.Tensor | None  # gathers [context ; new] keys per segment, or None
    single: bool  # one segment, no context: plain causal SDPA (cuDNN/flash) does it best


def find_varlen_kernels() -> list[tuple[str, VarlenKernel]]:
    """Candidate varlen kernels of the installed torch, most public first."""
    found: list[tuple[str, VarlenKernel]] = []
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        varlen_attn = None
    if varlen_attn is not None:
        params = inspect.signature(varlen_attn).parameters
        if "is_causal" in params:

            def public(q, k, v, cu_q, cu_k, max_q, max_k):
                return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=True)

            found.append(("torch.nn.attention.varlen.varlen_attn", public))
        elif "window_size" in params:

            def public_window(q, k, v, cu_q, cu_k, max_q, max_k):
                return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, window_size=(-1, 0))

            found.append(("torch.nn.attention.varlen.varlen_attn", public_window))
    op = getattr(torch.ops.aten, "_flash_attention_forward", None)
    if op is not None:

        def aten(q, k, v, cu_q, cu_k, max_q, max_k):
            return op(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, True, False)[0]

        found.append(("aten._flash_attention_forward", aten))
    return found


class VarlenAttention:
    """All segments in one FlashAttention varlen call; contexts gathered in front."""

    def __init__(self, kernel: VarlenKernel, *, name: str, kv_groups: int, native_gqa: bool):
        self.kernel = kernel
        self.name = f"varlen ({name})"
        self.kv_groups = kv_groups
        self.native_gqa = native_gqa

    def prepare(self, batch: PackedBatch) -> VarlenPlan:
        device = batch.input_ids.device
        lengths = torch.tensor(batch.lengths)
        cu_q = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu_q[1:] = lengths.cumsum(0)
        if not any(c is not None for c in batch.contexts):
            cu_q = cu_q.to(device)
            n = int(lengths.max())
            return VarlenPlan(cu_q, cu_q, n, n, None, single=len(lengths) == 1)
        pool_offsets = _context_offsets(batch)
        pool_size = pool_offsets[-1]
        pieces, k_lengths = [], []
        for i, (start, n, c) in enumerate(
            zip(batch.starts, batch.lengths, batch.contexts, strict=True)
        ):
            if c is not None:
                pieces.append(torch.arange(pool_offsets[c], pool_offsets[c + 1]))
            pieces.append(torch.arange(pool_size + start, pool_size + start + n))
            k_lengths.append(batch.offset(i) + n)
        k_len = torch.tensor(k_lengths)
        cu_k = torch.zeros(len(k_len) + 1, dtype=torch.int32)
        cu_k[1:] = k_len.cumsum(0)
        return VarlenPlan(
            cu_q.to(device),
            cu_k.to(device),
            int(lengths.max()),
            int(k_len.max()),
            torch.cat(pieces).to(device),
            single=False,
        )

    def __call__(self, q, k, v, plan: VarlenPlan, context_kv) -> torch.Tensor:
        if plan.single:  # e.g. one long document: SDPA may pick a faster kernel (cuDNN)
            qs, ks, vs = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
            out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)
            return out[0].transpose(0, 1)
        if plan.k_index is not None:
            pool_k, pool_v = context_kv
            k = torch.cat([pool_k, k]).index_select(0, plan.k_index)
            v = torch.cat([pool_v, v]).index_select(0, plan.k_index)
        if not self.native_gqa and self.kv_groups > 1:
            k = k.repeat_interleave(self.kv_groups, dim=1)
            v = v.repeat_interleave(self.kv_groups, dim=1)
        return self.kernel(q, k, v, plan.cu_q, plan.cu_k, plan.max_q, plan.max_k)


# ----------------------------------------------------------------------------------------
# SDPA backend
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SdpaGroup:
    """Segments that share a context, padded on the right to ``width``."""

    segments: list[int]
    width: int
    context: tuple[int, int] | None  # [start, end) in the pass's context pool
    span: tuple[int, int] | None  # a lone segment: its [start, end) in the packed tokens
    gather: torch.Tensor | None  # (B*width,) packed index per padded slot (pads repeat)
    src: torch.Tensor | None  # padded slots that hold real tokens
    dst: torch.Tensor | None  # ... and where those tokens live in the packed batch


@dataclass(frozen=True)
class SdpaPlan:
    groups: list[SdpaGroup]


class SdpaAttention:
    """Padded ``scaled_dot_product_attention``, one call per (context, length band) group."""

    name = "sdpa"

    def __init__(self, *, kv_groups: int, native_gqa: bool = True):
        self.kv_groups = kv_groups
        self.native_gqa = native_gqa

    def prepare(self, batch: PackedBatch) -> SdpaPlan:
        device = batch.input_ids.device
        pool_offsets = _context_offsets(batch)
        by_context: dict[int | None, list[int]] = {}
        for i, c in enumerate(batch.contexts):
            by_context.setdefault(c, []).append(i)
        groups = []
        for c, members in by_context.items():
            ctx = None if c is None else (pool_offsets[c], pool_offsets[c + 1])
            for band in _length_bands(members, batch.lengths):
                groups.append(_sdpa_group(batch, band, ctx, device))
        return SdpaPlan(groups)

    def __call__(self, q, k, v, plan: SdpaPlan, context_kv) -> torch.Tensor:
        out = torch.empty_like(q)
        heads, dim = q.shape[1], q.shape[2]
        for g in plan.groups:
            qg, kg, vg = (self._padded(x, g) for x in (q, k, v))
            if g.context is not None:
                a, b = g.context
                batch = qg.shape[0]
                ck, cv = (x[a:b].transpose(0, 1).unsqueeze(0) for x in context_kv)
                kg = torch.cat([ck.expand(batch, -1, -1, -1), kg], dim=2)
                vg = torch.cat([cv.expand(batch, -1, -1, -1), vg], dim=2)
            gqa = self.kv_groups > 1
            if gqa and not self.native_gqa:
                kg = kg.repeat_interleave(self.kv_groups, dim=1)
                vg = vg.repeat_interleave(self.kv_groups, dim=1)
                gqa = False
            if g.context is None:
                og = F.scaled_dot_product_attention(qg, kg, vg, is_causal=True, enable_gqa=gqa)
            else:
                mask = causal_lower_right(qg.shape[2], kg.shape[2])
                og = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask, enable_gqa=gqa)
            og = og.transpose(1, 2).reshape(-1, heads, dim)
            if g.span is not None:
                out[g.span[0] : g.span[1]] = og
            else:
                out.index_copy_(0, g.dst, og.index_select(0, g.src))
        return out

    @staticmethod
    def _padded(x: torch.Tensor, g: SdpaGroup) -> torch.Tensor:
        """(T, H, D) packed -> (B, H, width, D) padded for the group."""
        if g.span is not None:
            return x[g.span[0] : g.span[1]].transpose(0, 1).unsqueeze(0)
        b = len(g.segments)
        return x.index_select(0, g.gather).view(b, g.width, *x.shape[1:]).transpose(1, 2)


def _length_bands(members: list[int], lengths: list[int]) -> list[list[int]]:
    """Split a context group so that no segment is padded to more than twice its length."""
    ordered = sorted(members, key=lambda i: -lengths[i])
    bands: list[list[int]] = []
    for i in ordered:
        if bands and 2 * lengths[i] >= lengths[bands[-1][0]]:
            bands[-1].append(i)
        else:
            bands.append([i])
    return bands


def _sdpa_group(batch: PackedBatch, members, ctx, device) -> SdpaGroup:
    width = max(batch.lengths[i] for i in members)
    if len(members) == 1:
        s = batch.starts[members[0]]
        return SdpaGroup(members, width, ctx, (s, s + width), None, None, None)
    slots = torch.arange(width)
    gather, src, dst = [], [], []
    for row, i in enumerate(members):
        start, n = batch.starts[i], batch.lengths[i]
        gather.append(start + slots.clamp(max=n - 1))  # pads repeat the last real token
        src.append(row * width + torch.arange(n))
        dst.append(torch.arange(start, start + n))
    return SdpaGroup(
        members,
        width,
        ctx,
        None,
        torch.cat(gather).to(device),
        torch.cat(src).to(device),
        torch.cat(dst).to(device),
    )


# ----------------------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------------------

Backend = VarlenAttention | SdpaAttention


def reference_attention(q, k, v, batch: PackedBatch, context_kv) -> torch.Tensor:
    """Plain float32 attention, segment by segment, with an explicit mask (for checks)."""
    out = torch.empty_like(q, dtype=torch.float32)
    pool_offsets = _context_offsets(batch)
    groups = q.shape[1] // k.shape[1]
    for i, (start, n) in enumerate(zip(batch.starts, batch.lengths, strict=True)):
        ks, vs = k[start : start + n].float(), v[start : start + n].float()
        c = batch.contexts[i]
        if c is not None:
            a, b = pool_offsets[c], pool_offsets[c + 1]
            ks = torch.cat([context_kv[0][a:b].float(), ks])
            vs = torch.cat([context_kv[1][a:b].float(), vs])
        ks, vs = ks.repeat_interleave(groups, dim=1), vs.repeat_interleave(groups, dim=1)
        qs = q[start : start + n].float()
        scores = torch.einsum("qhd,khd->hqk", qs, ks) / q.shape[-1] ** 0.5
        offset = ks.shape[0] - n
        allowed = torch.ones(n, ks.shape[0], dtype=torch.bool, device=q.device).tril(offset)
        scores = scores.masked_fill(~allowed, float("-inf"))
        out[start : start + n] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), vs)
    return out


def _self_check(backend: Backend, *, heads: int, kv_heads: int, dim: int, device, dtype) -> float:
    """Max abs error of ``backend`` against :func:`reference_attention` on small batches:
    mixed contexts and lengths, and a lone segment (which some backends treat apart)."""
    from .packing import Segment, pack

    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(n, h):
        return torch.randn(n, h, dim, generator=gen).to(device=device, dtype=dtype)

    layouts = [
        ([Segment([1] * 37, 0), Segment([1] * 5, 0), Segment([1] * 64), Segment([1], 1)], [11, 3]),
        ([Segment([1] * 50)], []),
    ]
    worst = 0.0
    for segments, context_lengths in layouts:
        batch = pack(segments, context_lengths, device)
        t, c = batch.num_tokens, sum(context_lengths)
        q, k, v = rand(t, heads), rand(t, kv_heads), rand(t, kv_heads)
        ctx = (rand(c, kv_heads), rand(c, kv_heads))
        got = backend(q, k, v, backend.prepare(batch), ctx).float()
        want = reference_attention(q, k, v, batch, ctx)
        worst = max(worst, float((got - want).abs().max()))
    return worst


def _candidates(choice: str, *, groups: int, device: torch.device) -> list[Backend]:
    """Backends to try for ``choice`` on ``device``, best first."""
    candidates: list[Backend] = []
    if choice != "sdpa" and device.type == "cuda":
        for name, kernel in find_varlen_kernels():
            for native in (True, False):
                candidates.append(
                    VarlenAttention(kernel, name=name, kv_groups=groups, native_gqa=native)
                )
    if choice != "varlen":
        # On CUDA, repeat the KV heads: with grouped heads SDPA may fall back to its math
        # kernel (an L x L matrix: 69 GB at 32k tokens in float32), while with equal heads the
        # memory-efficient kernel takes float32 and the bottom-right causal mask directly.
        order = (False, True) if device.type == "cuda" else (True, False)
        candidates += [SdpaAttention(kv_groups=groups, native_gqa=n) for n in order]
    return candidates


def select_backend(
    choice: str,
    *,
    heads: int,
    kv_heads: int,
    dim: int,
    device: torch.device,
    dtype,
    candidates: Sequence[Backend] | None = None,
) -> Backend:
    """Pick the attention backend: ``auto`` prefers a varlen kernel that passes a check.

    ``candidates`` replaces the list built from ``choice`` and the installed torch (tests
    use it to offer a kernel that is wrong, as a broken FlashAttention build would be).
    """
    if choice not in ("auto", "varlen", "sdpa"):
        raise ValueError(f"attention must be auto, varlen or sdpa, not {choice!r}")
    if choice == "varlen" and device.type != "cuda" and candidates is None:
        raise ValueError("attention='varlen' needs a CUDA device")
    if candidates is None:
        candidates = _candidates(choice, groups=heads // kv_heads, device=device)
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    for backend in candidates:
        try:
            err = _self_check(
                backend, heads=heads, kv_heads=kv_heads, dim=dim, device=device, dtype=dtype
            )
        except Exception as exc:  # a kernel that refuses these inputs is simply not used
            log.info("attention: %s unusable here: %s", _describe(backend), exc)
            continue
        if err <= tolerance:
            return backend
        log.warning("attention: %s off by %.3g from the reference", _describe(backend), err)
    raise RuntimeError(f"no attention backend ({choice}) works on {device} with {dtype}")


def _describe(backend: Backend) -> str:
    return f"{backend.name} (grouped KV heads {'native' if backend.native_gqa else 'repeated'})"
