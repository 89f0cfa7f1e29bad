"""Scores and token ids equal the model card's recipe (devtools/reference.py)."""

from __future__ import annotations

import pytest

from devtools.reference import Recipe, format_instruction
from reranker import Reranker, Settings
from reranker.text.prompt import DEFAULT_INSTRUCTION, format_body

QUERY = "What is the capital of China?"
DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    "Der Eiffelturm steht in Paris und ist 330 Meter hoch.",  # German
    "北京是中华人民共和国的首都，也是政治和文化中心。",  # Chinese
    "Столица России — Москва.",  # Cyrillic
    "عاصمة مصر هي القاهرة",  # Arabic, right-to-left
    "emoji only 😀🎉🇨🇳 👩‍👩‍👧‍👦",  # astral plane, ZWJ sequences, flags
    "",  # empty document
    " leading space",
    "\n\nleading newlines\n",
    "\tleading tab",
    "2024 was a leap year; 3.14159 is pi.",  # digit-first
    "'s possessive-first and 'll contractions",
    "café vs cafe\u0301 (NFC)",  # decomposed accent: NFC must compose it
    "!!! punctuation first ???",
    "a " * 300,  # long repetitive text
]
TOLERANCE = 1e-5


def test_prompt_matches_model_card_format():
    assert format_body("I", "Q", "D") == format_instruction("I", "Q", "D")
    assert (
        format_instruction(None, "q", "d").split("\n")[0].split(": ", 1)[1] == DEFAULT_INSTRUCTION
    )


@pytest.mark.parametrize("max_length", [8192, 96])
def test_token_ids_equal_recipe(reranker, recipe, max_length):
    encoded = reranker.encoder.encode(DEFAULT_INSTRUCTION, QUERY, DOCUMENTS, max_length)
    pairs = [format_instruction(None, QUERY, d) for d in DOCUMENTS]
    want = recipe.input_ids(pairs, max_length=max_length)
    got = [encoded.prompt_ids(i) for i in range(len(DOCUMENTS))]
    assert got == want
    assert any(encoded.truncated) == (max_length == 96)


def _assert_close(got, want):
    assert len(got) == len(want)
    worst = max(abs(a - b) for a, b in zip(got, want, strict=True))
    assert worst <= TOLERANCE, f"max |score - recipe| = {worst:.3g}"


@pytest.mark.parametrize("name", ["untied", "tied"])
def test_scores_equal_recipe(model_dirs, name):
    reranker = Reranker.load(model_dirs[name], device="cpu", settings=Settings())
    recipe = Recipe(model_dirs[name])
    got = reranker.score(QUERY, DOCUMENTS)
    _assert_close(got, recipe.score(QUERY, DOCUMENTS))
    assert len(set(got)) > len(got) // 2  # random weights still spread the scores


@pytest.mark.parametrize("reuse", ["on", "off"])
@pytest.mark.parametrize("max_length", [8192, 80])
def test_scores_equal_recipe_with_and_without_prefix_reuse(reranker, recipe, reuse, max_length):
    got = reranker.with_settings(Settings(prefix_reuse=reuse)).score(
        QUERY, DOCUMENTS, max_length=max_length
    )
    _assert_close(got, recipe.score(QUERY, DOCUMENTS, max_length=max_length))


def test_truncated_documents_keep_prefix_and_suffix(reranker, recipe):
    long_doc = "Beijing is the capital of China. " * 200
    encoded = reranker.encoder.encode(DEFAULT_INSTRUCTION, QUERY, [long_doc, "short"], 128)
    assert encoded.truncated == [True, False]
    ids = encoded.prompt_ids(0)
    assert len(ids) == 128
    assert tuple(ids[: len(encoder_prefix(reranker))]) == encoder_prefix(reranker)
    assert tuple(ids[-len(reranker.encoder.suffix_ids) :]) == reranker.encoder.suffix_ids
    _assert_close(
        reranker.score(QUERY, [long_doc, "short"], max_length=128),
        recipe.score(QUERY, [long_doc, "short"], max_length=128),
    )
    result = reranker.rank(QUERY, [long_doc, "short"], max_length=128)
    assert result.usage.truncated_documents == 1


def encoder_prefix(reranker):
    return reranker.encoder.prefix_ids


def test_long_query_and_custom_instructions(reranker, recipe):
    query = "Which documents describe the history of Beijing as a capital city? " * 40
    docs = DOCUMENTS[:6]
    for instruction in ["Retrieve passages about capital cities", "", "   "]:
        _assert_close(
            reranker.score(query, docs, instruction=instruction),
            recipe.score(query, docs, instruction=instruction),
        )


def test_max_length_32768(reranker, recipe):
    doc = "word " * 40000
    got = reranker.score(QUERY, [doc, "tiny"], max_length=32768)
    want = recipe.score(QUERY, [doc, "tiny"], max_length=32768, batch_size=1, last_only=True)
    _assert_close(got, want)


@pytest.mark.parametrize("max_length", [8192, 96])
def test_usage_counts_the_tokens_the_recipe_runs(reranker, recipe, max_length):
    """usage.total_tokens is what the model card's code feeds the model (no padding), with
    duplicates counted each time; truncated_documents the ones it cuts."""
    docs = [*DOCUMENTS, DOCUMENTS[0], DOCUMENTS[-1]]
    result = reranker.rank(QUERY, docs, max_length=max_length)
    pairs = [format_instruction(None, QUERY, d) for d in docs]
    ids = recipe.input_ids(pairs, max_length=max_length)
    full = recipe.input_ids(pairs, max_length=10**6)
    assert result.usage.total_tokens == sum(map(len, ids))
    assert result.usage.truncated_documents == sum(
        len(a) < len(b) for a, b in zip(ids, full, strict=True)
    )
    assert (result.usage.truncated_documents > 0) == (max_length == 96)
