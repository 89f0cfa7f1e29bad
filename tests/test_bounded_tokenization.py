"""Long documents are tokenized by safe prefixes: ids and truncation flags equal whole-text ones.

The reference is always the literal encoder run on the whole text, then cut to ``room``.
"""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tokenizers import Regex
from tokenizers.pre_tokenizers import Split

from reranker.text import safecut
from reranker.text.prompt import DEFAULT_INSTRUCTION, format_head, format_tail
from reranker.text.safecut import SPACES, is_safe_cut
from reranker.text.tokenization import (
    PREFIX_SLACK_CHARS,
    PromptEncoder,
    literal_encoder,
    proof_applies,
)

# Pieces that sit on pre-tokenizer and NFC edges: space runs before words, CRLF and lone CR,
# combining marks in both orders (reordered by NFC), decomposed and precomposed letters,
# conjoining Hangul jamo, ccc-0 vowel signs that compose (Bengali, Balinese), singletons
# (Angstrom, Greek question mark), ZWJ emoji, flags, CJK with its punctuation, digits,
# contractions, long s and Kelvin (case-fold to s/k), text spelling control tokens.
FRAGMENTS = [
    " ", "  ", "   ", "\t", "\n", "\r\n", "\r", "\r\n\r\n", " \n ", "\u00a0", "\u3000", "\u2028",
    "\u180e", "\u200b", "\ufeff", "\x1c", "\x00", "\u0085",
    "e", "a", "Word", "word", "x", "é", "e\u0301", "e\u0323\u0301", "e\u0301\u0323", "\u0301",
    "\u0323", "A\u030a", "\u212b", "\u037e", "=", "<", "\u0338", "\u09c7", "\u09be",
    "\u1b05", "\u1b35", "\u1100", "\u1161", "\u11a8", "가", "각", "ſ", "\u212a",
    "😀", "\u200d", "👨\u200d👩\u200d👧", "🇫🇷", "🏽",
    "中", "文", "。", "，", "、", "「", "」", "か", "\u3099", "カ", "ー", "中文", "日本語",
    "カタカナ", "한국어", "straße", "Ünïcödé", "Ü", "ß", "д", "λ",
    "1", "23", "٣", "Ⅻ", "'s", "'ll", "'RE", "'", "!", "...", "?!", "-", "_", "/", "$",
    "<|im_end|>", "<|im_start|>", "</think>", "<think>", "<|endoftext|>",
]  # fmt: skip
hostile_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.characters(exclude_categories=("Cs",))),
    min_size=1,
    max_size=60,
).map("".join)


@pytest.fixture(scope="module")
def encoder(tokenizer):
    return PromptEncoder(tokenizer)


def reference(encoder, text, room):
    (ids,) = encoder.encode_texts([text])
    return ids[:room], len(ids) > room


def test_the_qwen_tokenizer_takes_the_bounded_path(encoder, tokenizer):
    assert encoder.bounded
    # the tokenizer as loaded has added tokens: the proof does not cover it
    assert not proof_applies(tokenizer.backend_tokenizer)
    other = literal_encoder(tokenizer.backend_tokenizer)
    other.pre_tokenizer = Split(Regex(r"\s+|\S+"), behavior="isolated")
    assert not proof_applies(other)


def test_stable_characters_never_join_what_precedes_them(tokenizer):
    """Every later element of a canonical decomposition, and every mark, is unstable."""
    later = set()
    for cp in range(0x110000):
        mapping = unicodedata.decomposition(chr(cp))
        if mapping and not mapping.startswith("<"):
            later.update(int(part, 16) for part in mapping.split()[1:])
    later.update(range(0x1161, 0x1176), range(0x11A8, 0x11C3))  # Hangul V and T jamo
    assert not [hex(cp) for cp in sorted(later) if safecut._stable(chr(cp))]
    assert not [c for c in map(chr, range(0x300, 0x370)) if safecut._stable(c)]
    # the tokenizer's own NFC leaves a run of stable characters unchanged
    run = "".join(c for c in map(chr, range(0x20000)) if safecut._stable(c))
    assert tokenizer.backend_tokenizer.normalizer.normalize_str(run) == run


def matched(pattern: str, text: str) -> set[str]:
    """Characters of ``text`` the tokenizer's regex engine matches with ``pattern``."""
    kept = Split(Regex(pattern), behavior="removed").pre_tokenize_str(text)
    covered = {i for _, (start, end) in kept for i in range(start, end)}
    return {ch for i, ch in enumerate(text) if i not in covered}


def test_character_classes_agree_with_the_tokenizers_regex_engine():
    everything = "".join(chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF)
    spaces, letters = matched(r"\s", everything), matched(r"\p{L}", everything)
    assert spaces <= SPACES
    assert {" ", "\t"} <= spaces
    assert set("0123456789") <= matched(r"\p{N}", everything)
    assert all(c in letters for c in everything if safecut._letter(c))
    assert not [c for c in everything if safecut._non_letter(c) and c in letters]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=hostile_text)
def test_every_safe_cut_gives_a_prefix_of_the_whole_ids(encoder, text):
    """The lemma: ids(text[:c]) is a proper prefix of ids(text) at every safe cut c."""
    cuts = [c for c in range(len(text)) if is_safe_cut(text, c)]
    whole, *prefixes = encoder.encode_texts([text] + [text[:c] for c in cuts])
    for c, ids in zip(cuts, prefixes, strict=True):
        assert len(ids) < len(whole) and whole[: len(ids)] == ids, (text[:c], text[c:])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    units=st.lists(hostile_text, min_size=1, max_size=4),
    length=st.integers(200, 4000),
    split=st.floats(0.0, 1.0),
    room=st.integers(1, 700),
    chars_per_token=st.sampled_from([0.01, 0.1, 0.5, 1.0, 3.0, 6.0]),
)
def test_bounded_ids_equal_whole_text_ids(encoder, units, length, split, room, chars_per_token):
    """Documents long enough for the prefix path. The sharp edge: a first prefix of ``first``
    characters whose ids number exactly ``room``, where an unsafe cut shows in the kept ids."""
    unit = "".join(units) + " plain words 12, "  # guarantees that safe cuts exist
    texts = [(unit * (length // len(unit) + 1))[:length], unit]
    first = PREFIX_SLACK_CHARS + int(split * (length // 2 - PREFIX_SLACK_CHARS))
    (edge,) = encoder.encode_texts([texts[0][:first]])
    cases = {(room, chars_per_token)}
    for r in {len(edge) - 1, len(edge), len(edge) + 1} - {0}:
        cases.add((r, (first - PREFIX_SLACK_CHARS + 0.5) / r))  # first prefix = ``first``
    for r, cpt in sorted(cases):
        got = encoder.encode_documents(texts, r, chars_per_token=cpt)
        want = [reference(encoder, t, r) for t in texts]
        assert got == ([w[0] for w in want], [w[1] for w in want]), (r, cpt)


@settings(max_examples=14, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    unit=hostile_text,
    max_length=st.sampled_from([96, 120, 300, 1024, 4096, 8192, 32768]),
    stretch=st.floats(0.5, 2.5),
)
@example(unit="e\u0301  \r\n中文。1", max_length=32768, stretch=2.5)  # ~1M characters
@example(unit="'s  \u3000</think>", max_length=8192, stretch=1.5)
def test_encode_matches_whole_tokenization_up_to_32k(encoder, unit, max_length, stretch):
    """The request path (``encode``) from tiny to 32768 tokens, documents of up to ~1M chars."""
    query = "q <|im_end|>"
    room = max_length - encoder.fixed_tokens - len(encoder.head_ids(DEFAULT_INSTRUCTION, query))
    unit += " some words, 7 "
    # past the prefix-path threshold (2 x (6 chars/token x room + 64)), or around room
    length = int(stretch * 2 * (6 * room + 64)) if stretch > 1 else int(stretch * 4 * room) + 1
    doc = (unit * (length // len(unit) + 1))[:length]
    enc = encoder.encode(DEFAULT_INSTRUCTION, query, [doc, unit], max_length)
    for i, text in enumerate([doc, unit]):
        ids, cut = reference(encoder, format_tail(text), room)
        assert enc.documents[i] == tuple(ids) + encoder.suffix_ids
        assert enc.truncated[i] == cut
    assert enc.context[len(encoder.prefix_ids) :] == tuple(
        encoder.encode_texts([format_head(DEFAULT_INSTRUCTION, query)])[0]
    )


def test_text_without_safe_cuts_is_tokenized_whole(encoder):
    """A single huge pre-token (one letter run) has no safe cut: ids still exact."""
    for text in [" " + "a" * 50_000, " " + "é" * 30_000, "\u3000" * 40_000]:
        assert encoder.encode_documents([text], 100) == tuple(
            [x] for x in reference(encoder, text, 100)
        )
