"""Attention over packed segments with cached contexts, against a plain float32 reference."""

from __future__ import annotations

import pytest
import torch

from reranker.model.attention import (
    SdpaAttention,
    VarlenAttention,
    reference_attention,
    select_backend,
)
from reranker.model.packing import Segment, pack

HEADS, KV_HEADS, DIM = 4, 2, 8


def make_batch(context_lengths, segments):
    batch = pack([Segment([1] * n, c) for n, c in segments], context_lengths, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    t, pool = batch.num_tokens, sum(context_lengths)
    q = torch.randn(t, HEADS, DIM, generator=g)
    k = torch.randn(t, KV_HEADS, DIM, generator=g)
    v = torch.randn(t, KV_HEADS, DIM, generator=g)
    ctx = (
        torch.randn(pool, KV_HEADS, DIM, generator=g),
        torch.randn(pool, KV_HEADS, DIM, generator=g),
    )
    return batch, q, k, v, ctx


LAYOUTS = [
    ([], [(7, None)]),  # one plain segment
    ([], [(9, None), (3, None), (1, None)]),  # several, different lengths (padding)
    ([5], [(4, 0), (4, 0), (1, 0)]),  # sharing one context
    ([5, 2], [(6, 0), (3, 1), (8, None), (2, 1), (30, 0)]),  # mixed contexts and bands
]


def test_pack_positions_continue_the_context():
    batch = pack([Segment([1, 2, 3], 0), Segment([4, 5], None)], [10], torch.device("cpu"))
    assert batch.positions.tolist() == [10, 11, 12, 0, 1]
    assert batch.last_index.tolist() == [2, 4]
    assert batch.input_ids.tolist() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("native_gqa", [True, False])
@pytest.mark.parametrize("contexts,segments", LAYOUTS)
def test_sdpa_matches_reference(contexts, segments, native_gqa):
    batch, q, k, v, ctx = make_batch(contexts, segments)
    backend = SdpaAttention(kv_groups=HEADS // KV_HEADS, native_gqa=native_gqa)
    got = backend(q, k, v, backend.prepare(batch), ctx)
    assert torch.allclose(got, reference_attention(q, k, v, batch, ctx), atol=1e-5)


def per_segment_kernel(diagonal):
    """A varlen kernel on CPU, segment by segment; ``diagonal(q_len, k_len)`` places the causal
    mask (None: no mask)."""

    def kernel(q, k, v, cu_q, cu_k, max_q, max_k):
        out = torch.empty_like(q)
        groups = q.shape[1] // k.shape[1]
        for i in range(len(cu_q) - 1):
            qs = q[cu_q[i] : cu_q[i + 1]].transpose(0, 1)
            ks = k[cu_k[i] : cu_k[i + 1]].repeat_interleave(groups, 1).transpose(0, 1)
            vs = v[cu_k[i] : cu_k[i + 1]].repeat_interleave(groups, 1).transpose(0, 1)
            d = diagonal(qs.shape[1], ks.shape[1])
            mask = None
            if d is not None:
                mask = torch.ones(qs.shape[1], ks.shape[1], dtype=torch.bool).tril(d)
            o = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask)
            out[cu_q[i] : cu_q[i + 1]] = o.transpose(0, 1)
        return out

    return kernel


# FlashAttention's varlen contract: causal, aligned bottom-right.
cpu_varlen_kernel = per_segment_kernel(lambda nq, nk: nk - nq)


@pytest.mark.parametrize("contexts,segments", LAYOUTS)
def test_varlen_packing_matches_reference(contexts, segments):
    """The varlen backend's own work (cu_seqlens, gathering contexts in front of each segment)
    checked with a CPU kernel that follows FlashAttention's varlen contract."""
    batch, q, k, v, ctx = make_batch(contexts, segments)
    backend = VarlenAttention(cpu_varlen_kernel, name="cpu", kv_groups=2, native_gqa=False)
    plan = backend.prepare(batch)
    assert plan.cu_q.tolist()[-1] == batch.num_tokens
    assert plan.cu_k.tolist()[-1] == batch.num_tokens + sum(
        batch.offset(i) for i in range(batch.num_segments)
    )
    got = backend(q, k, v, plan, ctx)
    assert torch.allclose(got, reference_attention(q, k, v, batch, ctx), atol=1e-5)


def select_on_cpu(choice: str, candidates=None):
    return select_backend(
        choice,
        heads=HEADS,
        kv_heads=KV_HEADS,
        dim=DIM,
        device=torch.device("cpu"),
        dtype=torch.float32,
        candidates=candidates,
    )


def test_backend_selection_on_cpu():
    assert isinstance(select_on_cpu("auto"), SdpaAttention)
    assert isinstance(select_on_cpu("sdpa"), SdpaAttention)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        select_on_cpu("varlen")
    with pytest.raises(ValueError, match="auto, varlen or sdpa"):
        select_on_cpu("flash")


# A wrong kernel: attends to every key (as an ``is_causal`` flag ignored would).
forgets_the_mask = per_segment_kernel(lambda nq, nk: None)
# A subtly wrong kernel: causal mask aligned top-left (FlashAttention < 2.1's convention), so a
# segment continuing a context does not see all of it.
top_left_causal = per_segment_kernel(lambda nq, nk: 0)


def refuses(q, k, v, cu_q, cu_k, max_q, max_k):
    raise RuntimeError("FlashAttention only supports Ampere GPUs or newer.")


def varlen(kernel, name):
    return VarlenAttention(kernel, name=name, kv_groups=HEADS // KV_HEADS, native_gqa=False)


def select_among(candidates, choice="auto"):
    return select_on_cpu(choice, candidates)


def test_self_check_rejects_wrong_kernels_and_takes_the_next_one(caplog):
    right = varlen(cpu_varlen_kernel, "right")
    wrong = [varlen(forgets_the_mask, "no mask"), varlen(top_left_causal, "top-left")]
    fallback = SdpaAttention(kv_groups=HEADS // KV_HEADS)
    with caplog.at_level("INFO", logger="reranker.model.attention"):
        chosen = select_among([*wrong, varlen(refuses, "old GPU"), right, fallback])
    assert chosen is right
    assert "varlen (no mask) (grouped KV heads repeated) off by" in caplog.text
    assert "varlen (top-left) (grouped KV heads repeated) off by" in caplog.text
    assert "varlen (old GPU) (grouped KV heads repeated) unusable here" in caplog.text
    assert select_among([*wrong, fallback]) is fallback
    with pytest.raises(RuntimeError, match=r"no attention backend \(varlen\) works on cpu"):
        select_among(wrong, choice="varlen")
