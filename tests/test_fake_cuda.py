"""The real Qwen3-Reranker-8B shapes down the CUDA branches, on fake CUDA tensors (no GPU).

The model is built with the exact 8B config on the meta device and moved to fake CUDA
(``devtools.fakecuda``: ``FakeTensorMode`` plus the three shims its docstring explains), then
taken through the production road: ``resolve_placement`` (device cuda, an H100's compute
capability 9.0 given explicitly), ``loading.engine_from_model`` (fusion, FP8 quantization,
numerics selection, attention backend selection, warm-up at the full token budget beside the
full prefix-KV bound), and ``Reranker.score`` on a mixed request (a 32k-token document
truncated, prefix reuse on and off). Every ATen op runs through its meta/fake kernel for the
fake CUDA device, so a shape it rejects (e.g. ``_scaled_mm``'s multiple-of-16 rule, checked
in its meta kernel in torch/_meta_registrations.py) fails here as on a GPU. Meta kernels
check few dtypes: those are checked from an op log (below).

Dynamo's trace of the layer functions is checked with ``fullgraph=True`` (backend ``eager``)
at the arguments the layer loop really passes; every ATen op is logged and checked for a
CUDA kernel, for the dtypes the narrower CUDA kernels take (``_scaled_mm``, ``bmm.dtype``,
flash attention) and for float8 reaching nothing but views, copies and ``_scaled_mm``.

Not shown by fake tensors: numerics (every value is 0: scores are 0.5, the attention
self-check passes every candidate, so ``auto`` takes the first, aten._flash_attention_forward
with native grouped KV heads: whether torch 2.9.1's CUDA build really ships that flash kernel
for sm90 is not provable here); which fused SDPA kernel a GPU picks (it reads device
properties; the fake runs plain attention); compiled code (``compile=False`` here: inductor
would generate Triton for a GPU it cannot query); real memory use (an estimate is printed).

Faults seen failing (injected in production code, test run, reverted):
* ``wide_linear``'s ``bmm(..., out_dtype=float32)`` replaced by ``mm(x16, w.t(),
  out_dtype=float32)``: TypeError "meta_mm() takes 2 positional arguments but 3 were given"
  at warm-up (torch 2.9.1 has no meta for ``aten.mm.dtype``).
* an FP8 weight of a non-multiple-of-16 width (``_maybe_fp8`` quantizing ``lin.weight[:-1]``):
  RuntimeError "Expected both dimensions of mat2 to be divisible by 16 but got
  torch.Size([4096, 6143])" from ``_scaled_mm``'s meta kernel at warm-up (the fixture), before
  the multiple-of-16 assertion below is reached.
* a graph break (``torch._dynamo.graph_break()`` added to ``attention_output_and_mlp``):
  ``CompiledOrEager(..., fullgraph=True)`` logs "torch.compile of attention_output_and_mlp
  failed (Call to `torch._dynamo.graph_break()` ..." and falls back, so ``failed`` is set.
* ``fp8.OUT_DTYPE = torch.float16``: the meta kernel takes it, a GPU on torch 2.9.1 + CUDA
  12.8 would not; the dtype table fails on ``aten::_scaled_mm``.
* ``_scaled_mm`` replaced by ``torch.mm`` on the e4m3 operands (the meta kernel takes it; no
  CUDA GEMM dispatches on float8): the float8 rule fails on ``aten::mm``.

Also not covered: an op with no CUDA kernel at all (none of production's ops is one, and no
realistic change was found that adds one); the check is ``_kernel_path`` below.
"""

from __future__ import annotations

import logging
import time

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from devtools.fakecuda import fake_cuda, passes_under_current_modes, view_indexing
from devtools.offline import QWEN3_8B, qwen3_config
from reranker import Reranker, Settings
from reranker.loading.loader import engine_from_model
from reranker.loading.placement import resolve_placement
from reranker.model.packing import Segment, pack
from reranker.model.scorer import CompiledOrEager, attention_inputs, attention_output_and_mlp
from reranker.text.tokenization import PromptEncoder

pytestmark = pytest.mark.fakecuda

H100 = (9, 0)
H100_GIB = 80


def _fake_8b(dtype: torch.dtype):
    from transformers import Qwen3ForCausalLM

    with torch.device("meta"):
        model = Qwen3ForCausalLM(qwen3_config(**QWEN3_8B)).to(dtype).requires_grad_(False)
    return model.to_empty(device="cuda")


@pytest.fixture(scope="module")
def fake_8b(tokenizer):
    started = time.perf_counter()
    with fake_cuda() as mode:
        placement = resolve_placement(device="cuda", quantization="fp8", gpus=1, capability=H100)
        assert placement.devices == (torch.device("cuda"),)
        assert placement.dtype == torch.float16
        model = _fake_8b(placement.dtype)
        settings = Settings(quantization="fp8", compile=False)
        encoder = PromptEncoder(tokenizer)
        engine = engine_from_model(model, encoder, settings, capability=H100)
        yield mode, engine, encoder, settings, model
    print(f"\nfake 8B built and warmed up in {time.perf_counter() - started:.1f}s")


@pytest.fixture(scope="module")
def fake_8b_float16(fake_8b):
    """The default deployment (float16, no FP8), built inside ``fake_8b``'s fake CUDA mode."""
    _, _, encoder, _, _ = fake_8b
    model = _fake_8b(torch.float16)
    settings = Settings(compile=False)
    return engine_from_model(model, encoder, settings, capability=H100)


def _engine(request, quantization: str):
    if quantization == "fp8":
        return request.getfixturevalue("fake_8b")[1]
    return request.getfixturevalue("fake_8b_float16")


def test_placement_numerics_backend_and_fp8_shapes(fake_8b):
    _, engine, _, _, _ = fake_8b
    scorer = engine.scorer
    assert scorer.device.type == "cuda"
    assert scorer.numerics.name == "float32-residual"
    assert not scorer.numerics.fp8_emulated
    assert scorer.attention.name.startswith("varlen")
    assert len(scorer.layer_weights) == 36
    for i, (pre, post) in enumerate(scorer.layer_weights):
        qkv = pre[1]
        assert qkv.weight.shape == (4096 + 1024 + 1024, 4096)
        assert pre[4] == (4096, 1024, 1024)
        linears = [qkv, post[0], post[2], post[3]]
        expected = [(6144, 4096), (4096, 4096), (24576, 4096), (4096, 12288)]
        for lin, shape in zip(linears, expected, strict=True):
            assert tuple(lin.weight.shape) == shape
            if lin.scale is None:
                continue
            n, k = lin.weight.shape
            assert lin.weight.dtype == torch.float8_e4m3fn
            assert n % 16 == 0 and k % 16 == 0, (i, n, k)
            assert lin.scale.shape == (n,) and lin.scale.dtype == torch.float32
            assert lin.weight.stride() == (k, 1)  # so weight.t() is column-major for _scaled_mm
        fp8_count = sum(lin.scale is not None for lin in linears)
        assert fp8_count == (1 if i == 35 else 4), i  # the last layer's post-gather GEMMs: 16-bit
    assert scorer.head.dtype == torch.float32 and scorer.head.shape == (4096,)


def test_budget_prefix_bound_flops_and_memory(fake_8b):
    _, engine, _, _, model = fake_8b
    scorer = engine.scorer
    assert engine.max_batch_tokens == 32768
    assert engine.max_prefix_tokens == 16384
    kv = scorer.kv_bytes_per_token
    assert kv == 2 * 36 * 8 * 128 * 2  # 144 KiB
    weights = sum(
        t.numel() * t.element_size() for t in {id(t): t for t in _weights(scorer, model)}.values()
    )
    t = engine.max_batch_tokens
    batch = pack([Segment([13] * (t // 2)), Segment([13] * (t // 2))], [], scorer.device)
    # torch's flash formula asserts equal q/kv heads (flop_counter.py sdpa_flop_count): count
    # attention apart, causal, per segment: 2 GEMMs x 2 FLOP x heads x dim x n(n+1)/2
    # and its bmm formula does not take bmm's out_dtype argument (wide_linear's GEMM)
    no_flash = {
        torch.ops.aten._flash_attention_forward: _zero_flops,
        torch.ops.aten.bmm: _bmm_flops,
    }
    flops = FlopCounterMode(display=False, custom_mapping=no_flash)
    with flops:
        out = scorer.logits(batch)
    n = t // 2
    attention = 36 * 2 * (4 * 32 * 128 * n * (n + 1) // 2)
    assert out.shape == (2,) and out.dtype == torch.float32 and out.device.type == "cuda"
    gemm = flops.get_total_flops()
    per_token = gemm / t
    # linear layers: 2 x 6.95B non-embedding params per token (performance notes: 13.9 GFLOP),
    # less the last layer's o_proj and MLP, which run on the 2 gathered tokens only
    last = 2 * (4096 * 4096 + 3 * 4096 * 12288)
    assert abs(per_token - (13.9e9 - last)) < 0.1e9, per_token
    total = gemm + attention
    # live activations at the widest point of a layer (float32 residual h, the fused gate/up
    # output in float32, its float16 input, q/k/v in float16), per token
    act = 4 * 4096 + 4 * 24576 + 2 * 4096 + 2 * 12288 * 2 + 2 * (4096 + 2 * 1024) * 2
    print(
        f"\n8B on an {H100_GIB} GB H100 (fake): budget {t} tokens per pass, prefix bound "
        f"{engine.max_prefix_tokens} tokens x {kv / 1024:.0f} KiB = "
        f"{engine.max_prefix_tokens * kv / 2**30:.2f} GiB; weights {weights / 2**30:.2f} GiB"
        f"\nFLOPs for one pass of {t} tokens (2 x {n}): GEMMs {gemm / 1e12:.1f} TFLOP "
        f"({per_token / 1e9:.2f} GFLOP/token, FlopCounterMode), causal attention "
        f"{attention / 1e12:.1f} TFLOP (analytic), total {total / 1e12:.1f} TFLOP"
        f"\nactivation estimate: {act / 1024:.0f} KiB/token, {act * t / 2**30:.2f} GiB per pass"
    )
    assert weights + engine.max_prefix_tokens * kv + act * t < H100_GIB * 1e9


def _zero_flops(*args, **kwargs) -> int:
    return 0


def _bmm_flops(a, b, *args, out_shape=None, **kwargs) -> int:
    return 2 * a[0] * a[1] * a[2] * b[2]


def _weights(scorer, model):
    for pre, post in scorer.layer_weights:
        for x in (*pre, *post):
            if isinstance(x, tuple) and x and isinstance(x[0], torch.Tensor):
                yield from (y for y in x if isinstance(y, torch.Tensor))
            elif isinstance(x, torch.Tensor):
                yield x
    yield model.model.embed_tokens.weight


@pytest.mark.parametrize("prefix_reuse", ["on", "off"])
def test_mixed_request(fake_8b, prefix_reuse):
    _, engine, encoder, settings, _ = fake_8b
    from dataclasses import replace

    reranker = Reranker([engine], encoder).with_settings(
        replace(settings, prefix_reuse=prefix_reuse)
    )
    long_doc = "word " * 40_000  # about 40k tokens: truncated to max_length
    docs = ["a short document", "another one, a little longer than the first", long_doc]
    before = reranker.engine.passes
    with passes_under_current_modes(reranker.engine):
        scores = reranker.score("what is this?", docs, max_length=32_768)
    assert len(scores) == 3
    assert all(s == 0.5 for s in scores)  # fake tensors have no values: every logit is 0
    assert reranker.engine.passes > before


def _recording(fn, calls: list):
    def record(*args):
        calls.append(args)
        return fn(*args)

    return record


@pytest.mark.parametrize("quantization", ["fp8", "none"])
def test_layer_functions_compile_to_one_graph_each(request, quantization, caplog):
    """``fullgraph=True`` on the production wrapper (``CompiledOrEager``) at the arguments
    the layer loop really passes: the first layer's (a 2-segment pass) and the last layer's
    ``post`` (two gathered rows, 16-bit weights). A graph break fails it: Dynamo raises,
    ``CompiledOrEager`` logs and falls back to eager, ``failed`` is set.

    ``backend="eager"``: Dynamo's trace is what can break; inductor would generate code for
    a GPU it cannot query. ``view_indexing`` (devtools/fakecuda.py) lets Dynamo run its
    getitem nodes on fake CUDA values on torch 2.9.1.
    """
    scorer = _engine(request, quantization).scorer
    pre_calls, post_calls = [], []
    fns = (
        _recording(attention_inputs, pre_calls),
        _recording(attention_output_and_mlp, post_calls),
    )
    batch = pack([Segment([13] * 300), Segment([13] * 211)], [], scorer.device)
    with torch.inference_mode():
        scorer._run(batch, (), None, scorer.numerics, scorer.attention, layer_fns=fns)
    cases = [
        (attention_inputs, pre_calls[0]),
        (attention_output_and_mlp, post_calls[0]),
        (attention_output_and_mlp, post_calls[-1]),
    ]
    assert post_calls[-1][0].shape == (2, 4096)
    torch._dynamo.reset()
    with torch.overrides._pop_mode_temporarily(), view_indexing(), torch.inference_mode():
        for fn, args in cases:
            wrapped = CompiledOrEager(fn, fullgraph=True, backend="eager")
            with caplog.at_level(logging.WARNING, logger="reranker.model.scorer"):
                out = wrapped(*args)
            assert not wrapped.failed, caplog.text
            eager = fn(*args)
            for a, b in zip(tree_leaves(out), tree_leaves(eager), strict=True):
                assert (a.shape, a.dtype, a.device) == (b.shape, b.dtype, b.device)
    torch._dynamo.reset()


class _OpLog(TorchDispatchMode):
    """Every ATen op that touches a CUDA tensor, with its input and output dtypes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, set[tuple[tuple[str, ...], tuple[str, ...]]]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = [x for x in tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
        outs = [x for x in tree_leaves(out) if isinstance(x, torch.Tensor)]
        if func.name().startswith("aten::") and any(x.is_cuda for x in ins + outs):
            dtypes = tuple(_short(x.dtype) for x in ins), tuple(_short(x.dtype) for x in outs)
            self.calls.setdefault(func.name(), set()).add(dtypes)
        return out


def _short(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# Kernels whose CUDA implementation accepts fewer dtypes than their meta kernel checks, and
# the dtypes the CUDA kernel takes (inputs in schema order, outputs):
# * _scaled_mm, row-wise scales: e4m3 operands, float32 scales; output bfloat16 only on torch
#   2.9.1 built for CUDA 12.8 (reranker/fp8.py's docstring cites the check in Blas.cpp)
# * bmm.dtype: "out_dtype must be the same as input dtype or fp32 for fp16/bf16 inputs"
#   (_bmm_out_dtype_cuda's check, aten/src/ATen/native/cuda/Blas.cpp)
# * flash attention: "FlashAttention only support fp16 and bf16 data type" (flash_api.cpp)
_SIXTEEN = ("float16", "bfloat16")
_CUDA_DTYPES = {
    "aten::_scaled_mm": lambda i, o: (
        i == ("float8_e4m3fn",) * 2 + ("float32",) * 2 and o == ("bfloat16",)
    ),
    "aten::bmm.dtype": lambda i, o: i[0] in _SIXTEEN and i[1] == i[0] and o == ("float32",),
    "aten::_flash_attention_forward": lambda i, o: i[0] in _SIXTEEN and i[1:3] == (i[0],) * 2,
}
# float8 tensors may only be viewed, copied (quantized) or multiplied by _scaled_mm: no other
# CUDA kernel dispatches on float8 types
_FLOAT8_OPS = {"aten::_scaled_mm", "aten::_to_copy", "aten::to.dtype", "aten::t", "aten::view"}
_FLOAT8_OPS |= {"aten::slice.Tensor", "aten::select.int", "aten::transpose.int", "aten::alias"}
_FLOAT8_OPS |= {"aten::detach"}


def _kernel_path(name: str) -> bool:
    """Whether the op runs on CUDA: a CUDA kernel, or a composite one (which re-dispatches to
    ops that are logged and checked themselves)."""
    keys = ("CUDA", "CompositeExplicitAutograd", "CompositeImplicitAutograd")
    keys += ("CompositeExplicitAutogradNonFunctional",)
    return any(torch._C._dispatch_has_kernel_for_dispatch_key(name, k) for k in keys)


@pytest.mark.parametrize("quantization", ["fp8", "none"])
def test_every_op_has_a_cuda_kernel_for_its_dtypes(request, quantization):
    """Warm-up (a context pass, then a pass continuing the prefix bound's contexts) and a
    mixed request with prefix reuse, logged op by op: each op has a CUDA (or composite)
    kernel, the kernels with narrower CUDA dtype support get dtypes they take, and float8
    values reach no op but views, copies and ``_scaled_mm``.

    The ops ``devtools.fakecuda`` substitutes for SDPA (masked plain attention, for lone
    segments) are logged too; they are ordinary CUDA ops."""
    engine = _engine(request, quantization)
    _, _, encoder, settings, _ = request.getfixturevalue("fake_8b")
    reranker = Reranker([engine], encoder).with_settings(settings)
    log = _OpLog()
    with log, passes_under_current_modes(reranker.engine):
        engine.warmup()
        reranker.score("what is this?", ["a short one", "word " * 40_000], max_length=32_768)
    missing = [name for name in log.calls if not _kernel_path(name)]
    assert not missing, missing
    for name, rule in _CUDA_DTYPES.items():
        for ins, outs in log.calls.get(name, ()):
            assert rule(ins, outs), (name, ins, outs)
    float8 = {n for n, calls in log.calls.items() for i, o in calls if "float8_e4m3fn" in i + o}
    assert float8 <= _FLOAT8_OPS, float8 - _FLOAT8_OPS
    expected = {"aten::bmm.dtype", "aten::_flash_attention_forward"}
    expected |= {"aten::_scaled_mm"} if quantization == "fp8" else set()
    assert expected <= set(log.calls), expected - set(log.calls)
    assert ("aten::_scaled_mm" in log.calls) == (quantization == "fp8")
