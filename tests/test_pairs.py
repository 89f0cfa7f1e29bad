"""The pair API (``Reranker.predict``) and docs/usage.md's CrossEncoder / LangChain examples."""

from __future__ import annotations

import abc
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from devtools.reference import Recipe
from reranker import Settings
from reranker.runtime.admission import AdmissionTimeout, request_chars

USAGE = (Path(__file__).resolve().parent.parent / "docs" / "usage.md").read_text()

PAIRS = [
    ("capital of France?", "Paris is the capital of France."),
    ("green tea benefits", "Green tea holds antioxidants."),
    ("capital of France?", "Bananas are yellow."),
    ("capital of France?", "Lyon is a large French city."),
    ("green tea benefits", "Paris is the capital of France."),
    ("capital of France?", "Paris is the capital of France."),  # a repeated pair
    ("rust vs go", "Both compile to native code."),
]


def recipe_scores(recipe: Recipe, pairs) -> list[float]:
    """The model card's code, one query at a time, put back in pair order."""
    out = [0.0] * len(pairs)
    for query in dict.fromkeys(q for q, _ in pairs):
        members = [i for i, (q, _) in enumerate(pairs) if q == query]
        for i, s in zip(members, recipe.score(query, [pairs[i][1] for i in members]), strict=True):
            out[i] = s
    return out


def test_predict_matches_the_recipe_in_pair_order(reranker, recipe):
    """Fault seen failing: scores put back in group order instead of pair order."""
    got = reranker.predict(PAIRS)
    assert isinstance(got, np.ndarray) and got.shape == (len(PAIRS),)
    want = recipe_scores(recipe, PAIRS)
    assert np.max(np.abs(got - np.asarray(want))) <= 1e-5
    assert got[0] == got[5]  # the same pair, the same score
    assert reranker.predict(PAIRS, convert_to_numpy=False) == got.tolist()
    assert reranker.predict([list(p) for p in PAIRS]).tolist() == got.tolist()  # lists work too


def test_predict_groups_by_query_and_shares_passes(reranker):
    """One batched run: the groups' documents share passes, and each query's prefix is built
    once. Fault seen failing: predict() as a loop of score() calls, one per query."""
    queries = dict.fromkeys(q for q, _ in PAIRS)
    separate = reranker.engine.passes
    for q in queries:
        reranker.score(q, [d for qq, d in PAIRS if qq == q])
    separate = reranker.engine.passes - separate
    together = reranker.engine.passes
    reranker.predict(PAIRS)
    together = reranker.engine.passes - together
    assert together < separate, (together, separate)


@pytest.mark.parametrize(
    "pairs,message",
    [
        ("query, doc", r"^pairs must be a list of \(query, document\) pairs, got str"),
        ([], "^pairs must not be empty"),
        ([("q", "d"), ("q",)], r"^pairs\[1\] must be a \(query, document\) pair of strings"),
        ([("q", "d"), ("q", 3)], r"^pairs\[1\] must be a \(query, document\) pair of strings"),
        ([("q", "d"), (" ", "d")], r"^pairs\[1\] and the pairs sharing its query: query must"),
    ],
)
def test_bad_pairs_name_the_pair(reranker, pairs, message):
    with pytest.raises(ValueError, match=message):
        reranker.predict(pairs)


def test_a_group_over_its_token_limit_names_the_pairs(reranker):
    """Token limits are found while tokenizing, inside admission; the error still names the
    pairs. Fault seen failing: prepare errors raised unnamed."""
    small = reranker.with_settings(Settings(device="cpu", max_request_tokens=100))
    pairs = [("short", "a"), ("long", "word " * 80)]
    with pytest.raises(ValueError, match=r"^pairs\[1\] and the pairs sharing its query: documents"):
        small.predict(pairs)
    assert small.admission.tokens.in_use == small.admission.chars.in_use == 0


def test_all_groups_are_admitted_together_under_the_in_flight_bounds(reranker):
    """The groups hold the in-flight bounds as one request would, so pair calls from many
    threads cannot pass them. Faults seen failing: predict() preparing its groups outside
    admission (peak 0, and no wait behind a held bound)."""
    bounded = reranker.with_settings(Settings(device="cpu", admission_timeout=1))
    prepared = [
        bounded.prepare(bounded.request(q, [d for qq, d in PAIRS if qq == q]))
        for q in dict.fromkeys(q for q, _ in PAIRS)
    ]
    chars = sum(request_chars(p.request) for p in prepared)
    bounded.predict(PAIRS)
    assert bounded.admission.tokens.peak == sum(p.num_tokens for p in prepared)
    assert bounded.admission.chars.peak == chars
    gate = bounded.admission.chars
    held = gate.enter(gate.capacity)  # another caller holds the whole bound
    assert held.granted
    try:
        with pytest.raises(AdmissionTimeout, match="RERANKER_MAX_CHARS_IN_FLIGHT"):
            bounded.predict(PAIRS)
    finally:
        gate.leave(held)
    assert gate.in_use == bounded.admission.tokens.in_use == 0


def readme_examples() -> list[str]:
    return re.findall(r"<!-- tested: tests/test_pairs.py -->\n```python\n(.*?)```", USAGE, re.S)


@pytest.fixture
def langchain_base(monkeypatch):
    """langchain_community's BaseCrossEncoder as its source defines it (cross_encoders/base.py:
    an ABC whose one abstract method is ``score(text_pairs) -> list[float]``); the package
    itself is not a dependency here."""
    module = types.ModuleType("langchain_community.cross_encoders.base")

    class BaseCrossEncoder(abc.ABC):
        @abc.abstractmethod
        def score(self, text_pairs: list[tuple[str, str]]) -> list[float]:
            """Score pairs' similarity."""

    module.BaseCrossEncoder = BaseCrossEncoder
    for name in ("langchain_community", "langchain_community.cross_encoders"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return BaseCrossEncoder


def test_readme_examples_run_as_written(model_dir, recipe, langchain_base):
    crossencoder, langchain = readme_examples()
    scope: dict = {}
    exec(crossencoder.replace('"Qwen/Qwen3-Reranker-8B"', repr(str(model_dir))), scope)
    want = recipe_scores(recipe, scope["pairs"])
    assert np.max(np.abs(scope["scores"] - np.asarray(want))) <= 1e-5
    exec(langchain, scope)
    adapter = scope["QwenCrossEncoder"](scope["model"])
    assert isinstance(adapter, langchain_base)
    got = adapter.score(scope["pairs"])
    assert isinstance(got, list) and all(type(x) is float for x in got)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-5
