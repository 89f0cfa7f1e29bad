"""Out-of-memory safety, warm-up and prefix reuse decisions (float16 range: test_float16.py)."""

from __future__ import annotations

import pytest
import torch

from reranker import Reranker, Settings
from reranker.config import env_name
from reranker.loading.loader import engine_for
from reranker.model.batching import plan_passes
from reranker.model.engine import BudgetTooLargeError, DocumentTooLargeError, Engine

QUERY = "what is a reranker?"
DOCS = [f"document number {i} " * (1 + i % 7) for i in range(24)]


class SmallDevice:
    """The real scorer on a pretend device that holds at most ``limit`` tokens per pass,
    less the context room taken with ``blank_context`` (never given back): bigger passes
    raise the same OutOfMemoryError CUDA raises."""

    def __init__(self, scorer, limit: int):
        self._scorer, self.limit, self.calls, self.held = scorer, limit, [], 0

    def __getattr__(self, name):
        return getattr(self._scorer, name)

    def blank_context(self, num_tokens):
        self.held += num_tokens
        return self._scorer.blank_context(num_tokens)

    def _check(self, batch):
        self.calls.append(batch.num_tokens)
        if batch.num_tokens + self.held > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    def logits(self, batch, contexts=()):
        self._check(batch)
        return self._scorer.logits(batch, contexts)

    def contexts(self, batch):
        self._check(batch)
        return self._scorer.contexts(batch)


def engine_over(scorer, **settings) -> Engine:
    return engine_for(scorer, Settings(**settings))


def constrained(reranker, limit, **settings):
    device = SmallDevice(reranker.engine.scorer, limit)
    return Reranker([engine_over(device, **settings)], reranker.encoder), device


def test_out_of_memory_splits_passes_and_keeps_scores(reranker):
    want = reranker.score(QUERY, DOCS)
    small, device = constrained(reranker, limit=150)
    encoded = small.prepare(small.request(QUERY, DOCS)).encoded
    reuse = small.engine.reuses_prefix(encoded)
    context = len(encoded.context)
    costs = [len(d) + (0 if r else context) for d, r in zip(encoded.documents, reuse, strict=True)]
    planned = plan_passes(costs, max_tokens=small.engine.max_batch_tokens, max_items=256)
    got = small.score(QUERY, DOCS)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-6
    failed = [n for n in device.calls if n > 150]
    ran = [n for n in device.calls if n <= 150]
    assert failed  # a pass did run out of memory...
    assert len(ran) > len(planned) + any(reuse)  # ...and was split
    assert small.engine.passes == len(device.calls)  # the metric counts every attempt
    # halving: fewer failed attempts than passes that ran, and every token ran exactly once
    assert len(failed) < len(ran)
    docs = sum(map(len, encoded.documents))
    context = len(encoded.context) * (any(reuse) + reuse.count(False))  # once if shared
    assert sum(ran) == docs + context


def test_a_single_prompt_too_large_fails_clearly(reranker):
    small, _ = constrained(reranker, limit=60)
    with pytest.raises(DocumentTooLargeError, match=r"a prompt of [\d,]+ tokens does not fit"):
        small.score(QUERY, ["long " * 200, "short"])


WARMUP_ERROR = (
    r"^a pass of 4096 tokens beside 500 cached prefix tokens does not fit on cpu; "
    r"lower max_batch_tokens or max_prefix_tokens$"
)


def test_warmup_fails_at_boot_when_the_budget_does_not_fit(reranker):
    small, _ = constrained(reranker, limit=1000, max_batch_tokens=4096, max_prefix_tokens=500)
    with pytest.raises(BudgetTooLargeError, match=WARMUP_ERROR):
        small.engine.warmup()
    fits, device = constrained(reranker, limit=5000, max_batch_tokens=4096, max_prefix_tokens=500)
    fits.engine.warmup()
    assert max(device.calls) == 4096  # the warm-up pass runs the whole budget


def test_the_service_names_the_variables_to_lower(reranker):
    small, _ = constrained(reranker, limit=1000, max_batch_tokens=4096, max_prefix_tokens=500)
    with pytest.raises(BudgetTooLargeError) as caught:
        small.engine.warmup()
    assert str(caught.value.naming(env_name)).endswith(
        "; lower RERANKER_MAX_BATCH_TOKENS or RERANKER_MAX_PREFIX_TOKENS"
    )


def test_warmup_holds_the_prefix_room_while_it_runs_the_budget(reranker):
    """The pass fits alone but not beside the cached prefixes the scheduler may keep.
    Fault seen failing: a warm-up that does not hold that room (it passes at boot)."""
    small, device = constrained(reranker, limit=4200, max_batch_tokens=4096, max_prefix_tokens=500)
    with pytest.raises(BudgetTooLargeError, match=WARMUP_ERROR):
        small.engine.warmup()
    assert device.held == 500


def test_the_prefix_room_is_what_a_cached_context_takes(reranker):
    scorer = reranker.engine.scorer
    (context,) = reranker.engine.contexts([[13] * 9])
    used = context.k.element_size() * (context.k.numel() + context.v.numel())
    assert scorer.kv_bytes_per_token * 9 == used
    room = scorer.blank_context(9)
    assert (room.k.shape, room.k.dtype) == (context.k.shape, context.k.dtype)


@pytest.mark.parametrize(
    "mode,docs,words,expected",
    [
        ("auto", 1, 1, False),  # nothing to share
        ("auto", 2, 1, True),  # short documents: the prefix is most of the work
        ("auto", 2, 2000, False),  # long documents on CPU: recomputing the prefix is cheaper
        ("on", 1, 1, True),
        ("off", 5, 1, False),
    ],
)
def test_prefix_reuse_decision_on_cpu(reranker, mode, docs, words, expected):
    engine = engine_over(reranker.engine.scorer, prefix_reuse=mode)
    encoded = reranker.encoder.encode("i", "q", ["word " * words] * docs, 8192)
    assert engine.reuses_prefix(encoded) == [expected] * docs


def test_prefix_reuse_is_decided_per_document_on_cpu(reranker):
    """One long document among short ones runs whole; the short ones still continue the
    prefix (a request-wide rule would switch all of them one way)."""
    engine = engine_over(reranker.engine.scorer)
    docs = ["short"] * 5 + ["word " * 3000] + ["tiny"]
    encoded = reranker.encoder.encode("i", "q", docs, 8192)
    assert engine.reuses_prefix(encoded) == [True] * 5 + [False, True]
    lone = reranker.encoder.encode("i", "q", ["short", "word " * 3000], 8192)
    assert engine.reuses_prefix(lone) == [False, False]  # one short document has no one to share


def test_compile_failure_falls_back_to_eager(model_dir, reranker, monkeypatch):
    """The CUDA default (compile on) on a machine whose compiler breaks at the first call, as
    a missing C++ toolchain or an Inductor bug would: scores are the eager ones."""
    tried = []

    def broken_compile(fn, **kwargs):
        def compiled(*args):
            tried.append(fn.__name__)
            raise RuntimeError("InductorError: CppCompileError: no working C++ compiler found")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    compiled = Reranker.load(model_dir, device="cpu", settings=Settings(compile=True))
    assert compiled.engine.scorer.compiled
    assert compiled.score(QUERY, DOCS) == reranker.score(QUERY, DOCS)
    assert compiled.rank(QUERY, DOCS) == reranker.rank(QUERY, DOCS)
    # each compiled function was tried once, then never again
    assert sorted(tried) == ["attention_inputs", "attention_output_and_mlp"]


def test_the_settings_reach_every_engine(reranker):
    """Fault seen failing: engine_for dropping max_prefix_tokens (the default stays)."""
    settings = Settings(device="cpu", max_batch_tokens=77, prefix_reuse="off", max_prefix_tokens=9)
    for engine in reranker.with_settings(settings).engines:
        assert (engine.max_batch_tokens, engine.prefix_reuse, engine.max_prefix_tokens) == (
            77,
            "off",
            9,
        )


def test_the_budget_error_survives_pickling():
    """Errors can cross process boundaries (Cog's worker); the two-argument constructor must
    not break that. Fault seen failing: no ``__reduce__`` (TypeError on unpickling)."""
    import pickle

    err = BudgetTooLargeError("a pass does not fit", ("max_batch_tokens", "max_prefix_tokens"))
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.settings == err.settings
