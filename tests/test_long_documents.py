"""long_documents="chunk": a long document scored whole, as windows; its best window counts.

Every window is checked against the model card's code (devtools/reference.py) as a document of
the window's own text: same token ids, same score. The needle test puts one strongly scoring
sentence deep in a long distractor document: chunking finds its window, truncation cannot.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import unicodedata

import pytest
import regex
import torch

from devtools.offline import save_random_model
from devtools.reference import format_instruction
from reranker import Reranker, Settings

QUERY = "What is the capital of China?"
YES_ID, NO_ID = 9693, 2152
# Text whose cuts are easy to get wrong: CJK without spaces (one character over two byte
# tokens), emoji ZWJ sequences, flags (regional-indicator pairs), skin-tone modifiers,
# keycaps, combining marks (NFC composes some), CRLF, tabs and digits.
HARD_PIECES = [
    "北京是中华人民共和国的首都也是全国的政治文化中心",
    "👨\u200d👩\u200d👧\u200d👦",
    "🇨🇳🇫🇷🇯🇵",
    "👍🏽",
    "1\ufe0f\u20e3",
    "e\u0301te\u0301 cafe\u0301 n\u0303",
    "line one\r\nline two\r\n",
    "\tcol\tcol",
    "12345678901234567890",
    "The quick brown fox jumps over the lazy dog.",
    "Ελληνικά και русский текст",
    "한국어 문장입니다",
]


def hard_document(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(HARD_PIECES) + rng.choice(["", " ", "\n"]) for _ in range(n))


def window_texts(prepared, i: int = 0) -> list[str]:
    doc = prepared.request.documents[i]
    return [doc[a:b] for a, b in (prepared.spans[k] for k in prepared.prompts(i))]


def test_every_window_is_scored_as_the_recipe_scores_its_text(reranker, recipe):
    """Token ids and score of each window equal the recipe's for a document of that text;
    the document's score, logit and best_span are its best window's; usage counts every
    window's tokens and nothing is truncated."""
    doc = hard_document(260)
    max_length, overlap = 160, 16
    request = reranker.request(
        QUERY, [doc, "short"], max_length=max_length, long_documents="chunk", chunk_overlap=overlap
    )
    prepared = reranker.prepare(request)
    texts = window_texts(prepared)
    assert len(texts) >= 8
    context = list(prepared.encoded.context)
    # the first window is the truncation itself: the recipe's ids for the whole document
    recipe_texts = [doc, *texts[1:]]
    for k, text in zip(prepared.prompts(0), recipe_texts, strict=True):
        want = recipe.input_ids([format_instruction(None, QUERY, text)], max_length)[0]
        assert context + list(prepared.encoded.documents[k]) == want
        assert len(want) <= max_length
    prompt_logits, _ = asyncio.run(reranker.aprompt_logits(prepared))
    window_scores = [
        torch.sigmoid(torch.tensor(prompt_logits[k])).item() for k in range(len(texts))
    ]
    recipe_scores = recipe.score(QUERY, recipe_texts, max_length=max_length)
    assert max(abs(a - b) for a, b in zip(window_scores, recipe_scores, strict=True)) <= 1e-5

    result = reranker.rerank(request)
    top = {r.index: r for r in result.results}
    best = max(range(len(texts)), key=lambda k: prompt_logits[k])
    assert top[0].windows == len(texts) and top[0].truncated is False
    assert abs(top[0].score - max(recipe_scores)) <= 1e-5
    assert top[0].best_span == prepared.spans[best]
    assert doc[slice(*top[0].best_span)] == texts[best]
    assert top[0].tokens == sum(
        len(context) + len(prepared.encoded.documents[k]) for k in range(len(texts))
    )
    assert top[1].windows == 1 and top[1].best_span == (0, 5)
    assert result.usage.total_tokens == top[0].tokens + top[1].tokens
    assert result.usage.truncated_documents == 0 and result.usage.windows == len(texts) + 1


def test_windows_cover_the_document_and_cut_only_between_graphemes(reranker, tokenizer):
    """Windows start at 0, end at the document's end, each starts after and ends after the
    previous one (leaving out at most the single space a window would open with), they
    overlap by at least the overlap (when it is a fraction of the window), and
    every cut is a grapheme-cluster boundary (\\X of the regex module, an independent
    oracle); each window's ids decode to exactly its text (no split UTF-8 character).

    Fault seen failing (before issue #29, on the category heuristic the windows used then):
    `_clean` returning True for every pair (a cut inside a ZWJ emoji
    family or a flag pair, and ids that decode to U+FFFD)."""
    doc = hard_document(400, seed=1)
    graphemes = {m.start() for m in regex.finditer(r"\X", doc)} | {len(doc)}
    for overlap in (0, 12, 40):
        request = reranker.request(
            QUERY, [doc], max_length=140, long_documents="chunk", chunk_overlap=overlap
        )
        prepared = reranker.prepare(request)
        spans = prepared.spans
        assert spans[0][0] == 0 and spans[-1][1] == len(doc)
        for n, ((a0, b0), (a1, b1)) in enumerate(itertools.pairwise(spans), 2):
            gap = doc[b0] == " "  # a window leaves out the space it opens with
            assert a0 < a1 <= b0 + gap and b0 < b1
            # the last window starts early enough to be a full one; the second may start
            # before the truncation's end, which need not be a clean cut
            if 2 < n < len(spans):
                assert (a1 < b0) if overlap else (a1 == b0 + gap)
            if 0 < overlap <= 16:  # a quarter of the window: clean cuts are in reach
                shared = reranker.encoder.encode_texts([doc[a1:b0]])[0]
                assert len(shared) >= overlap - 2  # counted on the whole document's ids
        for a, b in spans[1:]:  # the first window ends where the truncation does
            assert a in graphemes and b in graphemes, (a, b)
        suffix = len(reranker.encoder.suffix_ids)
        for (a, b), ids in zip(spans[1:], prepared.encoded.documents[1:], strict=True):
            decoded = tokenizer.decode(list(ids[:-suffix]))
            assert decoded == unicodedata.normalize("NFC", " " + doc[a:b])


@pytest.fixture(scope="module")
def needle_reranker(tmp_path_factory, tokenizer):
    """A tiny model whose yes/no rows of lm_head are scaled up (logit = 4 x (yes - no): the
    same ranking, scores spread far apart), saved and loaded as production loads a model."""
    from transformers import Qwen3ForCausalLM

    path = save_random_model(
        tmp_path_factory.mktemp("needle"), tokenizer=tokenizer, initializer_range=0.3, seed=3
    )
    model = Qwen3ForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.lm_head.weight[[YES_ID, NO_ID]] *= 4.0
    model.save_pretrained(path)
    return Reranker.load(path, device="cpu", settings=Settings())


FILLER = (
    "The committee reviewed the quarterly budget and approved the minutes of the last meeting. "
)
NEEDLE = "Zebra zebra zebra zebra zebra zebra zebra zebra. "


@pytest.mark.parametrize("where", [0.1, 0.5, 0.95])
def test_chunk_finds_the_needle_and_truncate_does_not(needle_reranker, where):
    """A needle sentence at 10%, 50% and 95% of a ~4,000-token distractor document: chunking
    scores the document by the window holding it (best_span contains the needle), well above
    every window without it; truncation keeps only the first ~180 tokens and misses it.

    Faults seen failing: windows that stop after the first one (a `return` after the first
    yield); `PreparedRequest.best` taking the first window instead of the best."""
    body = FILLER * 200
    cut = body.index(". ", int(len(body) * where)) + 2
    doc = body[:cut] + NEEDLE + body[cut:]
    needle = (cut, cut + len(NEEDLE) - 1)
    fields = dict(max_length=256, chunk_overlap=48)
    chunked = needle_reranker.rank(QUERY, [doc], long_documents="chunk", **fields).results[0]
    truncated = needle_reranker.rank(QUERY, [doc], **fields).results[0]
    start, end = chunked.best_span
    assert start <= needle[0] and needle[1] <= end, (chunked.best_span, needle)
    assert chunked.windows >= 20 and truncated.truncated
    assert chunked.logit > truncated.logit + 1.0

    prepared = needle_reranker.prepare(
        needle_reranker.request(QUERY, [doc], long_documents="chunk", **fields)
    )
    logits, _ = asyncio.run(needle_reranker.aprompt_logits(prepared))
    without = [
        x
        for x, (a, b) in zip(logits, prepared.spans, strict=True)
        if b <= needle[0] or a >= needle[1]
    ]
    assert chunked.logit > max(without) + 1.0


def test_overlap_and_field_errors_name_the_field(reranker):
    doc = "word " * 2000
    rank = reranker.rank
    with pytest.raises(ValueError, match=r"^chunk_overlap must be less than the window, \d+"):
        rank(QUERY, [doc], max_length=200, long_documents="chunk", chunk_overlap=200)
    request = reranker.request(QUERY, [doc], max_length=200, long_documents="chunk")
    window = 200 - len(reranker.prepare(request).encoded.context) - len(reranker.encoder.suffix_ids)
    with pytest.raises(
        ValueError, match=rf"^chunk_overlap .* {window} tokens here.* got {window}$"
    ):
        rank(QUERY, [doc], max_length=200, long_documents="chunk", chunk_overlap=window)
    # the largest overlap allowed still advances: every window starts after the previous one
    tight = reranker.prepare(
        reranker.request(
            QUERY, [doc[:2000]], max_length=200, long_documents="chunk", chunk_overlap=window - 1
        )
    )
    starts = [a for a, _ in tight.spans]
    assert starts == sorted(set(starts)) and tight.spans[-1][1] == 2000
    cases = [
        (dict(chunk_overlap=-1), r"^chunk_overlap must be between 0 and 32768, got -1$"),
        (dict(chunk_overlap=True), r"^chunk_overlap must be an integer, got bool$"),
        (dict(chunk_overlap="8"), r"^chunk_overlap must be an integer, got str$"),
        (
            dict(long_documents="split"),
            r"^long_documents must be one of truncate, chunk, not 'split'$",
        ),
        (dict(long_documents=None), r"^long_documents must be one of truncate, chunk, not None$"),
    ]
    for fields, message in cases:
        with pytest.raises(ValueError, match=message):
            rank(QUERY, [doc], **fields)
    with pytest.raises(ValueError, match=r'^max_length leaves \d+ tokens .*long_documents="chunk"'):
        rank(QUERY, [doc], max_length=100, long_documents="chunk")


def test_a_million_character_document_is_bounded_work(reranker):
    """A 1M-character document in chunk mode: windows within max_length each, scored under
    the in-flight token bound, which holds exactly the windows' tokens (no more, no less);
    a request token limit below them stops tokenizing at the window that crosses it.

    Fault seen failing: windows' tokens left out of prepare's running count (the limit
    check never fires)."""
    rng = random.Random(7)
    words = ["alpha", "beta", "river", "city", "budget", "北京", "数据", "café", "😀", "1999", "of"]
    doc = " ".join(rng.choice(words) for _ in range(200_000))[:1_000_000]
    settings = Settings(max_tokens_in_flight=2_000_000, max_request_tokens=1_000_000)
    bounded = reranker.with_settings(settings)
    request = bounded.request(QUERY, [doc], max_length=2048, long_documents="chunk")
    prepared = bounded.prepare(request)
    assert all(len(prepared.encoded.context) + len(d) <= 2048 for d in prepared.encoded.documents)
    result = bounded.rerank(request)
    assert result.usage.total_tokens == prepared.num_tokens > 250_000
    assert bounded.admission.tokens.peak == prepared.num_tokens
    assert bounded.admission.tokens.in_use == 0
    assert result.results[0].windows == prepared.num_windows > 100

    small = reranker.with_settings(Settings(max_request_tokens=100_000))
    with pytest.raises(ValueError, match=r"^documents make at least 10\d,\d{3} prompt tokens"):
        small.rank(QUERY, [doc], max_length=2048, long_documents="chunk")


def test_truncate_is_unchanged_and_chunk_agrees_on_short_documents(reranker):
    """The default is truncate, its output has no chunk fields, and a document that fits is
    one window whose logit is the truncate logit."""
    docs = ["Beijing is the capital of China.", "Paris " * 500, ""]
    default = reranker.rank(QUERY, docs, max_length=128).to_dict()
    assert (
        default == reranker.rank(QUERY, docs, max_length=128, long_documents="truncate").to_dict()
    )
    for r in default["results"]:
        assert set(r) == {"index", "document", "score", "logit", "tokens", "truncated"}
    assert set(default["usage"]) == {"total_tokens", "truncated_documents"}
    short = [docs[0], docs[2]]
    t = reranker.rank(QUERY, short, max_length=128).results
    c = reranker.rank(QUERY, short, max_length=128, long_documents="chunk").results
    assert [(r.index, r.tokens) for r in t] == [(r.index, r.tokens) for r in c]
    assert max(abs(a.logit - b.logit) for a, b in zip(t, c, strict=True)) <= 1e-5
    assert [r.windows for r in c] == [1, 1]
    chunked = json.loads(
        json.dumps(reranker.rank(QUERY, docs, long_documents="chunk", max_length=128).to_dict())
    )
    spans = {r["index"]: (r["windows"], r["best_span"]) for r in chunked["results"]}
    assert spans[0] == (1, [0, len(docs[0])]) and spans[2] == (1, [0, 0])
    assert spans[1][0] > 1 and 0 <= spans[1][1][0] < spans[1][1][1] <= len(docs[1])
    assert chunked["usage"]["windows"] == spans[1][0] + 2


def test_the_pair_api_and_duplicates_chunk_the_same_way(reranker):
    long = hard_document(120, seed=2)
    docs = [long, "Beijing is the capital of China.", long]
    fields = dict(max_length=160, long_documents="chunk")
    ranked = reranker.rank(QUERY, docs, **fields)
    by_index = {r.index: r for r in ranked.results}
    assert by_index[0].windows > 1 and by_index[0].best_span == by_index[2].best_span
    assert ranked.usage.total_tokens == sum(r.tokens for r in ranked.results)
    pairs = [(QUERY, d) for d in docs]
    scores = reranker.predict(pairs, **fields)
    assert max(abs(scores[i] - by_index[i].score) for i in range(3)) <= 1e-6
