"""float16 that cannot overflow: tiny models whose residual stream passes 65,504.

Real LLM residual streams carry a few "massive activation" channels, largest on the first token
and on delimiter tokens. Each model here puts one on ``<|im_start|>`` (in every prompt's prefix
and suffix) in channel 0 and grows it a different way; every other token keeps channel 0 at
exactly zero, so the outlier reaches ordinary tokens only through attention, as in real models.
Weights are rounded to float16-representable values before saving, so the float32 recipe and
the float16 model share their weights and differ only in activation rounding.
"""

from __future__ import annotations

import asyncio
import functools
import logging

import pytest
import torch

from devtools.offline import qwen3_config
from reranker import Reranker, Settings
from reranker.model.engine import Engine
from reranker.model.scorer import NonFiniteError, QwenScorer
from reranker.service import RerankService

QUERY = "which animal is the fastest on land?"
DOCS = [
    "The cheetah is the fastest land animal.",
    "Snails are slow.",
    "Horses can gallop at fifty kilometres per hour for a short time.",
    "Le guépard court très vite. 速度 🐆",
    "1 2 3 4 5 6 7 8 9 10",
    "",
]
IM_START = 151644
C = 0  # the outlier channel
FLOAT16_MAX = 65504.0


def _isolate_channel(model) -> None:
    """Channel C is zero for every token and written by nothing: shapes below add to it."""
    model.model.embed_tokens.weight[:, C] = 0
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight[C, :] = 0
        layer.mlp.down_proj.weight[C, :] = 0


def _mlp_writes_outlier(layer, gain: float, read: float = 1.0, unit: int = 0) -> None:
    """MLP unit ``unit`` reads ``read`` x channel C and writes ``gain`` x its activation to C.

    A token whose residual is dominated by channel C has x_C ~ sqrt(hidden) = 8 after the
    norm, so its activation is silu(8 read) x 8 read; a token with h_C = 0 gains nothing.
    """
    mlp = layer.mlp
    for w in (mlp.gate_proj.weight, mlp.up_proj.weight):
        w[unit, :] = 0
        w[unit, C] = read
    mlp.down_proj.weight[:, unit] = 0
    mlp.down_proj.weight[C, unit] = gain


def embedding_and_mlp(model) -> None:
    """3e4 from the embedding, +4e4 from each MLP: 7e4, 1.1e5, 1.5e5 across three layers.

    The SiLU-gated product that makes it is itself 320 x 320 = 1.0e5, past float16's range
    before down_proj even runs.
    """
    _isolate_channel(model)
    model.model.embed_tokens.weight[IM_START, C] = 3e4
    for layer in model.model.layers:
        _mlp_writes_outlier(layer, 0.39, read=40.0)


def embedding_at_the_limit(model) -> None:
    """65,000 from the embedding (a float16 value), a small MLP push past 65,504."""
    _isolate_channel(model)
    model.model.embed_tokens.weight[IM_START, C] = 65000
    for layer in model.model.layers:
        _mlp_writes_outlier(layer, 40.0)


def attention(model) -> None:
    """Attention grows it: a value dimension carries x_C, and o_proj writes it back to C.

    Head 0's value dimension 0 is x_C (about 8 on the outlier token, 0 elsewhere), so every
    token writes ``6e3 x (its attention to <|im_start|>) x 8`` to channel C: the outlier token
    itself most (it attends to itself), others in proportion. That share would squash an
    ordinary token's other channels in every norm, so the norms' weights scale them back up
    (real models' norm weights also span orders of magnitude).
    """
    _isolate_channel(model)
    model.model.embed_tokens.weight[IM_START, C] = 3e4
    for layer in model.model.layers:
        attn = layer.self_attn
        attn.v_proj.weight[0, :] = 0
        attn.v_proj.weight[0, C] = 1
        attn.o_proj.weight[C, :] = 0
        attn.o_proj.weight[C, 0] = 6e3
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.weight[:] = 30
            norm.weight[C] = 1
    model.model.norm.weight[:] = 100
    model.model.norm.weight[C] = 0


def value_overflow(model) -> None:
    """The value projection of the outlier token passes 65,504: float16 attention inputs
    cannot hold it, so only the safe mode (float32 activations) scores these prompts."""
    _isolate_channel(model)
    model.model.embed_tokens.weight[IM_START, C] = 3e4
    attn = model.model.layers[1].self_attn
    attn.v_proj.weight[:, C] = 0
    attn.v_proj.weight[: attn.head_dim, C] = 1e4  # kv head 0: x_C ~ 8 -> 8e4
    attn.o_proj.weight.mul_(1e-3)


def infinite(model) -> None:
    """An infinite embedding: nothing can score it."""
    model.model.embed_tokens.weight[IM_START, :] = float("inf")


SHAPES = {f.__name__: f for f in (embedding_and_mlp, embedding_at_the_limit, attention)}


def save_model(path, tokenizer, shape) -> object:
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(1)
    # initializer_range 0.2: scores spread over (0, 1); float16 rounding alone then moves them
    # by 3e-4 to 1e-3 on ordinary random models (measured over seeds), leaving the bound room
    config = qwen3_config(num_hidden_layers=3, initializer_range=0.2)
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():
        if shape is not None:
            shape(model)
        for p in model.parameters():  # float16-representable: both sides share the weights
            p.copy_(p.half().float())
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def outlier_dirs(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("outliers")
    shapes = SHAPES | {"value_overflow": value_overflow, "infinite": infinite, "plain": None}
    return {name: save_model(root / name, tokenizer, f) for name, f in shapes.items()}


@functools.cache
def recipe_scores(path) -> list[float]:
    from devtools.reference import Recipe

    return Recipe(path).score(QUERY, DOCS)


def load(path, dtype: str, numerics: str = "auto", **settings) -> Reranker:
    """``Reranker.load``, or the same parts by hand where a test picks the numerics."""
    if numerics == "auto":
        return Reranker.load(path, device="cpu", dtype=dtype, settings=Settings(**settings))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reranker.text.tokenization import PromptEncoder

    encoder = PromptEncoder(AutoTokenizer.from_pretrained(path))
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    scorer = QwenScorer(hf, yes_id=encoder.yes_id, no_id=encoder.no_id, numerics=numerics)
    s = Settings(**settings)
    engine = Engine(scorer, max_batch_tokens=s.batch_tokens("cpu"), prefix_reuse=s.prefix_reuse)
    return Reranker([engine], encoder, limits=s.limits)


def worst(a, b) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("shape", [*SHAPES, "value_overflow"])
def test_the_models_really_pass_float16_range(outlier_dirs, shape):
    """The construction works: in float32 the residual stream passes 65,504."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(outlier_dirs[shape], dtype=torch.float32)
    ids = torch.tensor([[IM_START, 872, 198, 785, 374]])
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    if shape == "value_overflow":  # here the residual stays in range; the value does not
        x = model.model.layers[1].input_layernorm(out.hidden_states[1])
        peak = model.model.layers[1].self_attn.v_proj(x).abs().max()
    else:
        peak = max(h.abs().max() for h in out.hidden_states)
    assert peak > FLOAT16_MAX


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reuse", ["on", "off"])
def test_float16_scores_outlier_models_like_the_float32_recipe(outlier_dirs, shape, reuse):
    want = recipe_scores(outlier_dirs[shape])
    fp16 = load(outlier_dirs[shape], "float16", prefix_reuse=reuse)
    got = fp16.score(QUERY, DOCS)
    assert worst(got, want) <= 1e-3
    assert max(want) - min(want) > 0.05  # the scores still tell documents apart
    assert fp16.engine.rescored == 0  # the float32 residual alone was enough


@pytest.mark.parametrize("shape", SHAPES)
def test_native_float16_overflows_on_these_models(outlier_dirs, shape):
    """What the float32 residual fixes: the recipe's own float16 rounding overflows."""
    from reranker.model.packing import Segment, pack

    native = load(outlier_dirs[shape], "float16", numerics="native")
    encoded = native.prepare(native.request(QUERY, DOCS)).encoded
    batch = pack([Segment(encoded.prompt_ids(i)) for i in range(len(DOCS))], [], "cpu")
    assert not torch.isfinite(native.engine.scorer.logits(batch)).all()


@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-5), ("bfloat16", 0.05)])
def test_other_dtypes_keep_their_parity_on_outlier_models(outlier_dirs, dtype, tolerance):
    path = outlier_dirs["embedding_and_mlp"]
    got = load(path, dtype).score(QUERY, DOCS)
    assert worst(got, recipe_scores(path)) <= tolerance


def test_ordinary_models_keep_their_float16_parity_or_better(outlier_dirs, model_dirs):
    """On models without outliers the float32 residual rounds less than the recipe's float16:
    its drift from the float32 recipe is no larger on average (per document it is rounding
    noise either way, about 1e-3)."""
    wide, native = [], []
    for path in (outlier_dirs["plain"], *model_dirs.values()):
        want = recipe_scores(path)
        for drift, numerics in ((wide, "auto"), (native, "native")):
            got = load(path, "float16", numerics=numerics).score(QUERY, DOCS)
            drift += [abs(a - b) for a, b in zip(got, want, strict=True)]
    assert sum(wide) <= sum(native) and max(wide) <= 2e-3, (max(wide), max(native))


def test_an_overflowing_prompt_is_rescored_in_the_safe_mode(outlier_dirs, caplog):
    path = outlier_dirs["value_overflow"]
    want = recipe_scores(path)
    fp16 = load(path, "float16")
    with caplog.at_level(logging.WARNING, logger="reranker.model.engine"):
        got = fp16.score(QUERY, DOCS)
    assert worst(got, want) <= 1e-3
    assert fp16.engine.rescored == len(DOCS)
    lines = [r.getMessage() for r in caplog.records if "float32 activations" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(f"{len(DOCS)} of {len(DOCS)} prompts")


def test_the_server_path_counts_rescored_documents(outlier_dirs):
    service = RerankService(load(outlier_dirs["value_overflow"], "float16"))
    request = service.reranker.request(QUERY, DOCS + DOCS[:2], top_k=5)
    try:
        result, metrics = asyncio.run(service.rerank(request, say=print))
    finally:
        service.close()
    assert metrics.rescored_documents == len(DOCS)  # distinct documents, each once
    assert len(result.results) == 5


def test_a_prompt_that_overflows_even_in_float32_fails_clearly(outlier_dirs):
    fp16 = load(outlier_dirs["infinite"], "float16")
    with pytest.raises(NonFiniteError, match=r"float16 even with float32 activations .*bfloat16"):
        fp16.score(QUERY, DOCS[:3])
    assert fp16.engine.rescored == 3  # the safe mode was tried first
