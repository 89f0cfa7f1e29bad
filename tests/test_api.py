"""The public API: validation, ranking semantics, invariances, output shape."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from reranker import DEFAULT_INSTRUCTION, Reranker, Settings
from reranker.request.options import RerankOptions
from reranker.request.prepare import PreparedRequest, RerankRequest
from reranker.request.results import RerankResult, sigmoid
from reranker.text.tokenization import EncodedRequest

QUERY = "Which city is the capital of France?"
DOCS = [
    "Paris is the capital and most populous city of France.",
    "Lyon is a city in France.",
    "The Eiffel Tower is in Paris.",
    "Berlin is the capital of Germany.",
    "Bananas are rich in potassium.",
    "",
    "France, officially the French Republic, is a country in Western Europe. " * 20,
    "Paris",
]


def scores_by_doc(reranker, docs, **kw):
    return dict(zip(docs, reranker.score(QUERY, docs, **kw), strict=True))


# -- validation ------------------------------------------------------------------------------

BAD_ARGUMENTS = [
    (dict(query=""), "query"),
    (dict(query="   \n"), "query"),
    (dict(query=None), "query"),
    (dict(query=42), "query"),
    (dict(documents=[]), "documents"),
    (dict(documents="a single string"), "documents"),
    (dict(documents=None), "documents"),
    (dict(documents=["ok", 3]), "documents[1]"),
    (dict(documents=["ok", None]), "documents[1]"),
    (dict(documents=[["nested"]]), "documents[0]"),
    (dict(instruction=7), "instruction"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=1.5), "top_k"),
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=True), "batch_size"),
    (dict(max_length=32769), "max_length"),
    (dict(max_length=0), "max_length"),
    (dict(max_length=20), "max_length"),  # too small for the prompt itself
    (dict(max_length="8192"), "max_length"),
    (dict(return_documents="no"), "return_documents"),  # a non-empty string is truthy
    (dict(return_documents=None), "return_documents"),
]


@pytest.mark.parametrize("change,name", BAD_ARGUMENTS)
def test_bad_arguments_raise_value_error_naming_the_argument(reranker, change, name):
    kwargs = dict(query=QUERY, documents=DOCS[:2]) | change
    query, documents = kwargs.pop("query"), kwargs.pop("documents")
    with pytest.raises(ValueError) as info:
        reranker.rank(query, documents, **kwargs)
    assert str(info.value).startswith(name), str(info.value)
    if not {"top_k", "return_documents"} & set(change):  # score() has neither
        with pytest.raises(ValueError) as info:
            reranker.score(query, documents, **kwargs)
        assert str(info.value).startswith(name), str(info.value)


def test_max_length_error_says_how_many_tokens_the_prompt_needs(reranker):
    with pytest.raises(ValueError, match=r"max_length=40 is too small: .* takes \d+ tokens"):
        reranker.score(QUERY, ["x"], max_length=40)


def test_limits_are_enforced_before_model_work(reranker):
    settings = Settings(
        max_documents=3, max_document_chars=10, max_query_chars=5, max_request_tokens=200
    )
    r = reranker.with_settings(settings)
    with pytest.raises(ValueError, match=r"^documents has 4 items; the limit is 3"):
        r.score("q", ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match=r"^documents\[1\] has 11 characters"):
        r.score("q", ["a", "x" * 11])
    with pytest.raises(ValueError, match=r"^query has 6 characters"):
        r.score("q" * 6, ["a"])
    with pytest.raises(ValueError, match=r"^instruction has 6 characters"):
        r.score("q", ["a"], instruction="i" * 6)
    with pytest.raises(ValueError, match=r"prompt tokens after truncation; the limit"):
        r.score("q", ["a", "b", "c"])  # ~80 prompt tokens each


def test_total_characters_limit(reranker):
    r = reranker.with_settings(Settings(max_total_chars=10))
    assert len(r.score("q", ["12345", "67890"])) == 2  # exactly at the limit
    with pytest.raises(ValueError, match=r"^documents hold 11 characters in all; the limit is 10"):
        r.score("q", ["12345", "678901"])
    with pytest.raises(ValueError, match=r"^documents hold 11 characters"):
        r.rank("q", ["1234567890", "x"])


# -- ranking semantics ------------------------------------------------------------------------


def test_rank_sorts_by_score_and_scores_match_score(reranker):
    result = reranker.rank(QUERY, DOCS)
    scores = reranker.score(QUERY, DOCS)
    assert [r.index for r in result.results] == sorted(
        range(len(DOCS)), key=lambda i: (-scores[i], i)
    )
    for r in result.results:
        assert r.document == DOCS[r.index]
        assert r.score == pytest.approx(scores[r.index], abs=1e-12)
        assert r.score == pytest.approx(sigmoid(r.logit), abs=1e-12)
        assert 0.0 <= r.score <= 1.0
        assert float(np.float32(r.logit)) == r.logit  # a float32 value


@pytest.mark.parametrize("top_k,expected", [(None, 8), (0, 8), (1, 1), (3, 3), (8, 8), (50, 8)])
def test_top_k(reranker, top_k, expected):
    result = reranker.rank(QUERY, DOCS, top_k=top_k)
    full = reranker.rank(QUERY, DOCS)
    assert len(result.results) == expected
    assert result.results == full.results[:expected]
    assert result.total_documents == len(DOCS)


def test_saturated_scores_rank_by_logit():
    """Logits above ~37 all give score 1.0 in float64; the order still follows the logit
    (docs/scoring.md: "Ranking sorts by logit, which keeps documents apart where score rounds to
    1.0"). Ties in the logit itself keep input order."""
    logits = [38.5, 45.25, 40.0, -50.0, 45.25, 37.0]
    assert [sigmoid(x) for x in logits[:3]] == [1.0, 1.0, 1.0]  # saturated, as claimed
    docs = tuple(f"d{i}" for i in range(len(logits)))
    encoded = EncodedRequest((1, 2), [(3,)] * len(docs), [False] * len(docs))

    def ranked(**fields):
        request = RerankRequest("q", docs, RerankOptions(instruction="i", **fields))
        prepared = PreparedRequest(request, list(range(len(docs))), encoded)
        return RerankResult.build(prepared, logits).results

    assert [r.index for r in ranked()] == [1, 4, 2, 0, 5, 3]
    assert [r.logit for r in ranked()] == sorted(logits, reverse=True)
    top = ranked(top_k=2, return_documents=False)
    assert [(r.index, r.document, r.score) for r in top] == [(1, None, 1.0), (4, None, 1.0)]


def test_ties_are_broken_by_input_index(reranker):
    docs = ["same text", "other", "same text", "same text"]
    result = reranker.rank(QUERY, docs)
    same = [r.index for r in result.results if r.document == "same text"]
    assert same == [0, 2, 3]
    assert len({r.score for r in result.results if r.document == "same text"}) == 1


def test_return_documents_false(reranker):
    result = reranker.rank(QUERY, DOCS, return_documents=False)
    assert all(r.document is None for r in result.results)
    assert {r.index for r in result.results} == set(range(len(DOCS)))


def test_result_shape_and_usage(reranker):
    result = reranker.rank(QUERY, DOCS, top_k=2)
    d = result.to_dict()
    assert set(d) == {"instruction", "query", "results", "total_documents", "usage"}
    assert set(d["results"][0]) == {"index", "document", "score", "logit", "tokens", "truncated"}
    assert d["instruction"] == DEFAULT_INSTRUCTION and d["query"] == QUERY
    encoded = reranker.encoder.encode(DEFAULT_INSTRUCTION, QUERY, DOCS, 8192)
    assert d["usage"] == {"total_tokens": encoded.num_tokens, "truncated_documents": 0}


def test_instruction_none_is_default_and_empty_is_used(reranker):
    default = reranker.score(QUERY, DOCS[:3])
    assert reranker.score(QUERY, DOCS[:3], instruction=DEFAULT_INSTRUCTION) == default
    assert reranker.score(QUERY, DOCS[:3], instruction="") != default
    assert reranker.rank(QUERY, DOCS[:3], instruction="").instruction == ""


# -- invariances -------------------------------------------------------------------------------


def test_scores_do_not_depend_on_document_order(reranker):
    base = scores_by_doc(reranker, DOCS)
    rng = random.Random(0)
    for _ in range(3):
        shuffled = DOCS[:]
        rng.shuffle(shuffled)
        got = scores_by_doc(reranker, shuffled)
        assert max(abs(got[d] - base[d]) for d in DOCS) <= 1e-6


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7, 1000])
def test_scores_do_not_depend_on_batch_size(reranker, batch_size):
    base = reranker.score(QUERY, DOCS)
    got = reranker.score(QUERY, DOCS, batch_size=batch_size)
    assert max(abs(a - b) for a, b in zip(got, base, strict=True)) <= 1e-6


@pytest.mark.parametrize("budget", [1, 100, 300])
def test_scores_do_not_depend_on_the_token_budget(reranker, budget):
    small = reranker.with_settings(Settings(max_batch_tokens=budget))
    base = reranker.score(QUERY, DOCS)
    got = small.score(QUERY, DOCS)
    assert max(abs(a - b) for a, b in zip(got, base, strict=True)) <= 1e-6


def test_duplicates_score_identically_and_are_scored_once(reranker):
    docs = ["alpha", "beta", "alpha", "alpha", "beta"]
    scores = reranker.score(QUERY, docs)
    assert scores[0] == scores[2] == scores[3] and scores[1] == scores[4]
    prepared = reranker.prepare(reranker.request(QUERY, docs))
    assert len(prepared.encoded.documents) == 2
    # usage still counts every document, as the recipe would run them
    single = reranker.prepare(reranker.request(QUERY, ["alpha"])).num_tokens
    assert prepared.num_tokens > 2 * single


def test_results_are_deterministic(reranker):
    assert reranker.rank(QUERY, DOCS) == reranker.rank(QUERY, DOCS)


# -- load ----------------------------------------------------------------------------------


def test_load_dtypes(model_dir, reranker):
    base = reranker.score(QUERY, DOCS)
    assert reranker.dtype == torch.float32 and reranker.device.type == "cpu"
    for dtype in ("bfloat16", torch.bfloat16):
        half = Reranker.load(model_dir, device="cpu", dtype=dtype, settings=Settings())
        assert half.dtype == torch.bfloat16
        got = half.score(QUERY, DOCS)
        assert all(math.isfinite(x) for x in got)
        assert max(abs(a - b) for a, b in zip(got, base, strict=True)) < 0.05


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(dtype="float64"), "^dtype must be one of float16, bfloat16, float32"),
        (dict(device="tpu"), "^device must be cpu, cuda or cuda:N"),
    ],
)
def test_load_rejects_bad_options(model_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Reranker.load(model_dir, settings=Settings(), **kwargs)


def test_load_cuda_without_cuda_is_a_clear_error(model_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a GPU machine too
    with pytest.raises(ValueError, match=r"^device=cuda, but this machine has no usable CUDA"):
        Reranker.load(model_dir, device="cuda", settings=Settings())


def test_default_device_and_dtype(model_dir):
    r = Reranker.load(model_dir, settings=Settings())
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert r.device.type == want
    assert r.dtype == (torch.float16 if want == "cuda" else torch.float32)


def test_show_progress_bar_draws_on_stderr_and_changes_nothing(reranker, capsys):
    """Fault seen failing: rerank() ignoring show_progress_bar (no bar)."""
    docs = DOCS * 3
    plain = reranker.rank(QUERY, docs)
    capsys.readouterr()
    with_bar = reranker.rank(QUERY, docs, show_progress_bar=True)
    err = capsys.readouterr().err
    assert with_bar == plain
    assert f"{len(docs)}/{len(docs)}" in err and "tokens/s" in err, err
    assert reranker.score(QUERY, docs, show_progress_bar=False) == reranker.score(QUERY, docs)
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match=r"^show_progress_bar must be true or false"):
        reranker.rank(QUERY, docs, show_progress_bar="yes")


def test_each_result_says_its_tokens_and_whether_it_was_truncated(reranker, recipe):
    """`tokens` is the length of the recipe's own prompt for that document (counted by the
    model card's tokenizer call, devtools/reference.py), `truncated` whether max_length cut it.
    Fault seen failing: tokens without the shared prefix (document ids only)."""
    from devtools.reference import format_instruction

    docs = ["short one", "word " * 300, "", "short one", "another short document"]
    result = reranker.rank(QUERY, docs, max_length=120, top_k=0)
    ids = recipe.input_ids([format_instruction(None, QUERY, d) for d in docs], max_length=120)
    by_index = {r.index: r for r in result.results}
    assert [by_index[i].tokens for i in range(len(docs))] == [len(x) for x in ids]
    assert [by_index[i].truncated for i in range(len(docs))] == [False, True, False, False, False]
    assert sum(r.tokens for r in result.results) == result.usage.total_tokens
    assert result.usage.truncated_documents == 1
    top = reranker.rank(QUERY, docs, max_length=120, top_k=2)
    assert top.usage == result.usage  # usage counts every document, returned or not
