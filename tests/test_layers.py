"""Fused projections: q/k/v and gate/up each one GEMM, on weights fused once at load."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from devtools.offline import save_random_model
from devtools.reference import Recipe
from reranker import Reranker, Settings
from reranker.model.packing import Segment, pack
from reranker.model.scorer import QwenScorer

QUERY = "What is the capital of China?"
DOCS = ["The capital of China is Beijing.", "Gravity attracts bodies.", "", "a " * 40]


class Linears(TorchDispatchMode):
    """Records the weight operand of every ``aten.linear`` / ``aten.mm`` / ``aten.addmm``."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name == "linear":
            self.weights.append(args[1])
        elif name in ("mm", "addmm"):
            self.weights.append(args[-1].t())
        return func(*args, **(kwargs or {}))


def hf_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def scorer_for(model, reranker) -> QwenScorer:
    enc = reranker.encoder
    return QwenScorer(model, yes_id=enc.yes_id, no_id=enc.no_id)


def test_a_layer_runs_four_gemms_on_the_weights_fused_at_load(reranker):
    scorer = reranker.engine.scorer
    prepared = {}
    for pre, post in scorer.layer_weights:
        qkv, wo, gate_up, down = pre[1], post[0], post[2], post[3]
        prepared |= {qkv.weight.data_ptr(): "qkv", gate_up.weight.data_ptr(): "gate_up"}
        prepared |= {wo.weight.data_ptr(): "o", down.weight.data_ptr(): "down"}
    encoded = reranker.prepare(reranker.request(QUERY, DOCS)).encoded
    batch = pack([Segment(encoded.prompt_ids(i)) for i in range(len(DOCS))], [], "cpu")
    with Linears() as seen:
        scorer.logits(batch)
    names = [prepared.get(w.data_ptr()) for w in seen.weights]
    layers = len(scorer.layers)
    assert names == ["qkv", "o", "gate_up", "down"] * layers  # no weight built during the pass
    cfg = scorer._model.config
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    assert seen.weights[0].shape == (q + 2 * kv, cfg.hidden_size)
    assert seen.weights[2].shape == (2 * cfg.intermediate_size, cfg.hidden_size)


def test_fusing_replaces_the_projection_weights_instead_of_copying_them(model_dir, reranker):
    model = hf_model(model_dir)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    old = [weakref.ref(m.weight) for m in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.up_proj)]
    ids = torch.tensor([reranker.prepare(reranker.request(QUERY, DOCS[:1])).encoded.prompt_ids(0)])
    with torch.no_grad():
        before = model(ids).logits
    bytes_before = sum(p.numel() * p.element_size() for p in model.parameters())
    scorer = scorer_for(model, reranker)
    gc.collect()
    assert all(ref() is None for ref in old)  # the unfused tensors are gone ...
    qkv = scorer.layer_weights[0][0][1].weight
    start = 0
    for m in (attn.q_proj, attn.k_proj, attn.v_proj):  # ... the model reads rows of qkv
        n = m.weight.shape[0]
        assert m.weight.data_ptr() == qkv[start : start + n].data_ptr()
        start += n
    assert start == qkv.shape[0]
    assert sum(p.numel() * p.element_size() for p in model.parameters()) == bytes_before
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)  # and still runs its own forward


def test_a_second_scorer_on_the_same_model_reuses_the_fused_weights(model_dir, reranker):
    model = hf_model(model_dir)
    first, second = scorer_for(model, reranker), scorer_for(model, reranker)
    for (pre1, post1), (pre2, post2) in zip(first.layer_weights, second.layer_weights, strict=True):
        assert pre1[1].weight.data_ptr() == pre2[1].weight.data_ptr()
        assert post1[2].weight.data_ptr() == post2[2].weight.data_ptr()
        assert pre2[1].weight.shape == pre1[1].weight.shape
    assert second.logits(pack([Segment((1, 2, 3))], [], "cpu")).isfinite().all()


@pytest.fixture(scope="module")
def biased_model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("biased")
    return save_random_model(path, tokenizer=tokenizer, attention_bias=True, initializer_range=0.3)


def test_projection_biases_are_fused_too(biased_model_dir):
    """Qwen3 configs may set attention_bias: the fused q/k/v GEMM adds all three biases."""
    model = hf_model(biased_model_dir)
    with torch.no_grad():
        for layer in model.model.layers:  # random biases (they are initialized to zero)
            a = layer.self_attn
            for proj in (a.q_proj, a.k_proj, a.v_proj, a.o_proj):
                proj.bias.normal_(0, 0.3)
    model.save_pretrained(biased_model_dir)
    got = Reranker.load(biased_model_dir, device="cpu", settings=Settings()).score(QUERY, DOCS)
    want = Recipe(biased_model_dir).score(QUERY, DOCS)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-5
