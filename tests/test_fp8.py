"""FP8 (W8A8, experimental) on CPU, through the exact emulation of the row-wise scaled GEMM.

What is checked: the quantized GEMM against an independent W8A8 reference; a request's
quantized GEMMs and scores do not depend on the other documents in its pass; the last layer's
GEMMs after the last-token gather stay 16-bit and weights are quantized once, at load; the
safe mode multiplies float32 activations by the dequantized weights; setup refuses devices
without FP8 tensor cores in one line.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from devtools.offline import save_random_model
from reranker import Reranker, Settings
from reranker.config import SettingsError
from reranker.model import fp8 as fp8_module
from reranker.model.engine import Engine, Item
from reranker.model.fp8 import FP8UnsupportedError, unsupported_reason
from reranker.model.packing import Segment, pack
from reranker.model.scorer import QwenScorer
from reranker.service import RerankService
from reranker.text.tokenization import PromptEncoder

QUERY = "which animal is the fastest on land?"
DOCS = [
    "The cheetah is the fastest land animal.",
    "Snails are slow.",
    "Horses can gallop at fifty kilometres per hour for a short time.",
    "",
]
OTHERS = ["An elephant, and another elephant.", "The elephant is not a horse.", "1 2 3"]
OUTLIER = 45740  # " elephant": its embedding is a one-channel spike (fixture below)


def reference_w8a8(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """W8A8 as the papers define it, in float64: each row of x (token) and of w (output
    channel) scaled so that its largest magnitude is e4m3's 448, rounded to e4m3, scaled back;
    then an ordinary matmul."""

    def fake_quant(t: torch.Tensor) -> torch.Tensor:
        t = t.double()
        s = t.abs().max(dim=1, keepdim=True).values / 448.0
        s = torch.where(s == 0, 1.0, s)  # an all-zero row stays zero
        return (t / s).to(torch.float8_e4m3fn).double() * s

    return fake_quant(x) @ fake_quant(w).T


def spread_rows(t: torch.Tensor) -> torch.Tensor:
    """Rows whose magnitudes span six orders: a shared scale would flush the small ones."""
    return t * torch.logspace(-3, 3, t.shape[0]).unsqueeze(1)


@pytest.mark.parametrize("rows", [5, 300])  # padded to MIN_ROWS, and not
def test_the_fp8_gemm_matches_an_independent_w8a8_reference(rows):
    g = torch.Generator().manual_seed(0)
    x = spread_rows(torch.randn(rows, 64, generator=g))
    w = spread_rows(torch.randn(48, 64, generator=g))
    wq, w_scale = fp8_module.quantize_weight(w)
    assert wq.dtype == torch.float8_e4m3fn and w_scale.shape == (48,)
    got = fp8_module.linear(x, wq, w_scale, emulate=True)
    want = reference_w8a8(x, w)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, 48)
    # the one rounding the reference lacks is the kernel's bfloat16 output (2^-9 relative)
    err = (got.double() - want).abs() / want.abs()
    assert err.max() <= 2**-8, err.max()
    plain = (x.double() @ w.double().T - want).abs() / want.abs()
    assert plain.max() > 2**-6  # FP8 really is coarser than float32: the check has teeth


def hf_model(path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def load(path, dtype=torch.float32, quantization="fp8-emulated", **settings) -> Reranker:
    """The parts of ``Reranker.load`` by hand: the emulation is not a deployable setting."""
    from transformers import AutoTokenizer

    encoder = PromptEncoder(AutoTokenizer.from_pretrained(path))
    scorer = QwenScorer(
        hf_model(path, dtype),
        yes_id=encoder.yes_id,
        no_id=encoder.no_id,
        quantization=quantization,
    )
    s = Settings(**settings)
    engine = Engine(scorer, max_batch_tokens=s.batch_tokens("cpu"), prefix_reuse=s.prefix_reuse)
    return Reranker([engine], encoder, limits=s.limits)


@pytest.fixture(scope="module")
def outlier_dir(tmp_path_factory, tokenizer):
    """A tiny model where one word's embedding is a spike in one channel (as LLM outlier
    tokens are): its normed rows have a far larger maximum than other tokens'."""
    path = save_random_model(
        tmp_path_factory.mktemp("fp8") / "m", tokenizer=tokenizer, initializer_range=0.3
    )
    model = hf_model(path)
    assert tokenizer.encode(" elephant", add_special_tokens=False) == [OUTLIER]
    with torch.no_grad():
        model.model.embed_tokens.weight[OUTLIER] = 0
        model.model.embed_tokens.weight[OUTLIER, 0] = 100
    model.save_pretrained(path)
    return path


@functools.cache
def recipe_scores(path) -> list[float]:
    from devtools.reference import Recipe

    return Recipe(path).score(QUERY, DOCS)


class FP8Outputs:
    """Collects every FP8 GEMM's output (the function the layers call)."""

    def __init__(self, monkeypatch) -> None:
        self.outputs: list[torch.Tensor] = []
        real = fp8_module.linear

        def spy(*args, **kwargs):
            y = real(*args, **kwargs)
            self.outputs.append(y)
            return y

        monkeypatch.setattr(fp8_module, "linear", spy)

    def take(self) -> list[torch.Tensor]:
        out, self.outputs = self.outputs, []
        return out


def test_a_requests_scores_do_not_depend_on_the_other_documents_in_its_pass(
    outlier_dir, monkeypatch
):
    """Per-token activation scales: a document's quantized GEMM rows are bit-for-bit the same
    alone and beside another request's documents, whose outlier word has the largest
    activations of the pass. The scores then agree to float32 rounding: the last layer's
    GEMMs over the gathered last tokens and the head run with M = segments in the pass, and
    CPU sgemm/sgemv round the last bit differently for different M even without FP8."""
    rr = load(outlier_dir)
    mine = rr.prepare(rr.request(QUERY, DOCS)).encoded
    theirs = rr.prepare(rr.request("elephants?", OTHERS)).encoded
    assert all(OUTLIER in theirs.prompt_ids(i) for i in range(2))
    assert not any(OUTLIER in mine.prompt_ids(i) for i in range(len(DOCS)))
    items = [Item(tuple(mine.prompt_ids(i))) for i in range(len(DOCS))]
    others = [Item(tuple(theirs.prompt_ids(i))) for i in range(len(OTHERS))]
    spy = FP8Outputs(monkeypatch)
    alone = rr.engine.run(items).logits
    alone_rows = spy.take()
    shared = rr.engine.run(others + items).logits[len(others) :]
    shared_rows = spy.take()
    before = sum(len(it.ids) for it in others)  # my tokens come after theirs in the pass
    assert max(abs(a - b) for a, b in zip(alone, shared, strict=True)) <= 1e-5
    assert len(alone_rows) == len(shared_rows) > 0
    for a, s in zip(alone_rows, shared_rows, strict=True):
        assert torch.equal(a, s[before : before + a.shape[0]])


class W8A8Linear(nn.Module):
    """An ``nn.Linear`` replaced by :func:`reference_w8a8` with the kernel's bfloat16 output."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = reference_w8a8(x.reshape(-1, x.shape[-1]), self.weight).to(torch.bfloat16)
        y = y.to(x.dtype).reshape(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


@functools.cache
def w8a8_recipe_scores(path, dtype=torch.float32) -> list[float]:
    """The model card's code in float32 on the weights as loaded in ``dtype``, with the
    linears W8A8 (reference_w8a8) except the last layer's output projection and MLP: what the
    FP8 engine should compute."""
    from transformers import AutoTokenizer

    from devtools.reference import Recipe

    model = hf_model(path, dtype).float()
    last = len(model.model.layers) - 1
    for i, layer in enumerate(model.model.layers):
        a, m = layer.self_attn, layer.mlp
        names = [(a, "q_proj"), (a, "k_proj"), (a, "v_proj")]
        if i < last:
            names += [(a, "o_proj"), (m, "gate_proj"), (m, "up_proj"), (m, "down_proj")]
        for module, name in names:
            setattr(module, name, W8A8Linear(getattr(module, name)))
    recipe = Recipe(tokenizer=AutoTokenizer.from_pretrained(path), model=model)
    return recipe.score(QUERY, DOCS)


@pytest.mark.parametrize("reuse", ["on", "off"])
def test_fp8_scores_equal_the_recipe_with_w8a8_linears(model_dir, reuse):
    """End to end in float32: the engine's FP8 path (fused, padded, prefix reuse or not) is
    the recipe with W8A8 linears, and far from the unquantized recipe."""
    got = load(model_dir, prefix_reuse=reuse).score(QUERY, DOCS)
    want = w8a8_recipe_scores(model_dir)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-5
    plain = recipe_scores(model_dir)
    assert max(abs(a - b) for a, b in zip(got, plain, strict=True)) > 1e-3


@pytest.fixture(scope="module")
def mild_dir(tmp_path_factory, tokenizer):
    """Smaller random weights than model_dir's: scores near 0.7 rather than 0.03 on DOCS, and
    less amplification of single FP8 rounding flips."""
    path = tmp_path_factory.mktemp("fp8") / "mild"
    return save_random_model(path, tokenizer=tokenizer, initializer_range=0.1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fp8_with_16_bit_models_stays_near_the_w8a8_recipe(mild_dir, dtype):
    """float16 (float32 residual) and bfloat16 (native activations): the same quantized
    weights, but 16-bit activations move some FP8 roundings (measured: 0.006 and 0.012)."""
    got = load(mild_dir, dtype).score(QUERY, DOCS)
    want = w8a8_recipe_scores(mild_dir, dtype)
    assert min(want) > 0.5  # scores a broken pipeline (0 or 1, or 0.5) would miss
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 0.03


@pytest.mark.parametrize("numerics", ["native", "float32-residual", "float32"])
def test_a_float8_weight_in_every_numerics_mode(numerics):
    """``Numerics.linear`` on a float8 weight: bfloat16 activations stay bfloat16 (native),
    float32 ones get float32 (wide), the safe mode multiplies by the dequantized weight; the
    bias is added in every mode."""
    from reranker.model.layers import Linear
    from reranker.model.scorer import NUMERICS

    nx = replace(NUMERICS[numerics], fp8_emulated=True)
    g = torch.Generator().manual_seed(2)
    x = spread_rows(torch.randn(7, 32, generator=g))
    w, bias = torch.randn(16, 32, generator=g), torch.randn(16, generator=g)
    if numerics == "native":
        x = x.to(torch.bfloat16)
    wq, w_scale = fp8_module.quantize_weight(w)
    got = nx.linear(x, Linear(wq, bias, w_scale))
    if numerics == "float32":
        want, tolerance = x.double() @ reference_dequantized(w).double().T, 1e-6
    else:  # bfloat16 output (and, native, a bfloat16 bias add): 2^-9 relative per rounding
        want, tolerance = reference_w8a8(x.float(), w), 2**-8 if numerics != "native" else 2**-7
    assert got.dtype == (torch.bfloat16 if numerics == "native" else torch.float32)
    size = x.double().abs() @ w.double().abs().T + bias.double().abs()
    assert ((got.double() - want - bias.double()).abs() / size).max() <= tolerance


class DtypeCounter(TorchDispatchMode):
    """Counts casts to float8 (one per quantized tensor) and 16/32-bit ``aten.linear`` calls."""

    def __init__(self) -> None:
        super().__init__()
        self.to_fp8 = 0
        self.linear_rows: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in ("to", "_to_copy") and getattr(out, "dtype", None) == torch.float8_e4m3fn:
            self.to_fp8 += 1
        if name == "linear":
            self.linear_rows.append(args[0].shape[0])
        return out


def test_weights_are_quantized_at_load_and_the_last_layers_gathered_gemms_stay_16_bit(
    model_dir,
):
    rr = load(model_dir)
    scorer = rr.engine.scorer
    layers = len(scorer.layers)
    enc = rr.prepare(rr.request(QUERY, DOCS)).encoded
    batch = pack([Segment(enc.prompt_ids(i)) for i in range(len(DOCS))], [], "cpu")
    with DtypeCounter() as seen:
        scorer.logits(batch)
    # one activation cast per FP8 GEMM (weights were cast at load): four per layer, and the
    # last layer's q/k/v; nothing else (the float32 yes-minus-no head) is quantized
    assert seen.to_fp8 == 4 * (layers - 1) + 1
    # the last layer's output projection, gate/up and down run 16-bit on the gathered tokens
    assert seen.linear_rows == [len(DOCS)] * 3
    assert scorer.head.dtype == torch.float32
    # the quantized layers' 16-bit weights are gone from the model
    first, last = scorer.layers[0], scorer.layers[-1]
    assert first.self_attn.q_proj.weight is None and first.mlp.down_proj.weight is None
    assert last.self_attn.q_proj.weight is None and last.mlp.down_proj.weight is not None


def test_the_safe_mode_multiplies_float32_activations_by_the_dequantized_weights(model_dir):
    """The float32-activation re-scoring of an overflowing prompt uses the FP8 weights too:
    it equals a plain float32 model whose weights are the dequantized FP8 ones."""
    rr = load(model_dir)
    reference = hf_model(model_dir)
    last = len(reference.model.layers) - 1
    with torch.no_grad():
        for i, layer in enumerate(reference.model.layers):
            a, m = layer.self_attn, layer.mlp
            mods = [a.q_proj, a.k_proj, a.v_proj]
            if i < last:
                mods += [a.o_proj, m.gate_proj, m.up_proj, m.down_proj]
            for mod in mods:
                mod.weight.copy_(reference_dequantized(mod.weight))
    plain = QwenScorer(reference, yes_id=rr.encoder.yes_id, no_id=rr.encoder.no_id)
    enc = rr.prepare(rr.request(QUERY, DOCS)).encoded
    batch = pack([Segment(enc.prompt_ids(i)) for i in range(len(DOCS))], [], "cpu")
    got = rr.engine.scorer.safe_logits(batch)
    assert (got - plain.logits(batch)).abs().max() <= 1e-4
    assert (got - rr.engine.scorer.logits(batch)).abs().max() > 1e-5  # activations not FP8


def reference_dequantized(w: torch.Tensor) -> torch.Tensor:
    s = w.double().abs().max(dim=1, keepdim=True).values / 448.0
    return ((w.double() / s).to(torch.float8_e4m3fn).double() * s).float()


def test_fp8_is_refused_on_the_cpu_unless_emulated(model_dir):
    model = hf_model(model_dir)
    with pytest.raises(FP8UnsupportedError) as info:
        QwenScorer(model, yes_id=1, no_id=2, quantization="fp8")
    message = str(info.value)
    assert message.startswith("quantization=fp8 needs a CUDA device with FP8")
    assert "the model would run on cpu" in message and "\n" not in message
    assert model.model.layers[0].self_attn.q_proj.weight is not None  # refused before touching
    with pytest.raises(ValueError, match=r"^quantization=fp8 needs"):  # before loading anything
        Reranker.load(model_dir, device="cpu", settings=Settings(quantization="fp8"))
    with pytest.raises(SettingsError, match=r"^RERANKER_QUANTIZATION=fp8 needs"):
        RerankService.start(Settings(model=str(model_dir), device="cpu", quantization="fp8"))


@pytest.mark.parametrize(
    "capability,refused", [((8, 0), True), ((8, 6), True), ((8, 9), False), ((9, 0), False)]
)
def test_fp8_needs_compute_capability_8_9(capability, refused):
    """A100 (8.0) and A10/RTX 30 (8.6) have no FP8 tensor cores; L4/L40S (8.9), H100 (9.0) do."""
    reason = unsupported_reason("cuda:0", capability)
    if refused:
        assert reason == f"cuda:0 has compute capability {capability[0]}.{capability[1]}"
        line = fp8_module.requirement(reason, "RERANKER_QUANTIZATION")
        assert line.startswith("RERANKER_QUANTIZATION=fp8 needs") and line.endswith("; use none")
    else:
        assert reason is None


def test_fp8_refuses_weights_it_cannot_quantize(tmp_path, tokenizer, model_dir):
    from reranker.model.layers import prepare_layers

    odd = hf_model(save_random_model(tmp_path / "odd", tokenizer=tokenizer, intermediate_size=100))
    with pytest.raises(ValueError, match="divisible by 16"):
        prepare_layers(odd.model.layers, "fp8")
    model = hf_model(model_dir)
    QwenScorer(model, yes_id=1, no_id=2, quantization="fp8-emulated")
    with pytest.raises(ValueError, match="already quantized"):  # its 16-bit weights are gone
        QwenScorer(model, yes_id=1, no_id=2)
