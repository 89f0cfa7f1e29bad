"""Where a long document may be cut so that its prefix tokenizes to a prefix of its ids.

Tokenizing a 1M-character document whole costs 250-480 MiB and 0.7-2 s of CPU even when 256
tokens are kept (bench/tokenization.py). :func:`safe_cut` finds a position ``c`` with

    ids(text[:c]) == ids(text)[:len(ids(text[:c]))]   and   len(ids(text)) > len(ids(text[:c]))

for the Qwen pipeline (NFC normalizer, then the Split regex :data:`QWEN_PATTERN` with
``Isolated`` behaviour, byte-level mapping, BPE inside each pre-token, no added tokens). So
once a prefix yields ``room`` ids, they are the whole text's first ``room`` ids, and the text
is truncated. Why it holds, with ``x, y, z = text[c-1], text[c], text[c+1]``:

1. NFC. A *stable* character (:func:`_stable`: canonical combining class 0, no canonical
   decomposition but a Hangul syllable's, which NFC restores, never a later element of a
   canonical composition) starts a fresh normalization segment: NFC(a + b) == NFC(a) +
   NFC(b) when b starts with one (UAX #15, "stable code points"). x, y and z are all
   stable, so NFC(text) = NFC(text[:c-1]) + x + y + NFC(text[c+1:]) and NFC(text[:c]) =
   NFC(text[:c-1]) + x: the normalized prefix is a prefix of the normalized text, ending in
   x, followed in the text by y.
2. Regex. The pattern is scanned left to right, each match starting where the last ended
   (every character matches some branch, so the matches tile the text). A match starting
   before c is the same in the prefix and in the text if every test it makes at position c
   gives the same answer for y as for end-of-input. Tests that reach c from an earlier start:
   ``\\p{L}+`` (a letter run through x), ``'re``/``'ve``/``'ll`` (letters), the runs
   ``[^\\s\\p{L}\\p{N}]+`` and ``[\\r\\n]*`` and the whitespace runs (only through an x of
   their own class), ``(?!\\S)`` (only after whitespace); ``\\p{N}`` matches one character.
   So c is never reached, or y answers like end-of-input, when:
     (a) x is a digit: no run passes through a digit, and ``\\p{N}`` stops at it;
     (b) x is a letter and y is not: only letter tests reach c;
     (c) x is not whitespace and y is a space, a tab or a digit: the runs that can pass x
         or start after it (letters, symbols, newlines after symbols) all reject y, as
         end-of-input does.
   Then the prefix's matches are exactly the text's matches up to c, and the text has at
   least one more (it is longer). BPE runs inside each pre-token, so ids follow.
Classes are decided only for characters whose class no Unicode version changes (ASCII,
original CJK/kana/Hangul letters and CJK punctuation, a superset of every White_Space
character), so the Unicode versions of Python and of the tokenizer need not agree; a character
unassigned in Python's table is never stable. tests/test_bounded_tokenization.py checks the
tables against ``unicodedata`` and the lemma against the real tokenizer.
"""

from __future__ import annotations

import unicodedata

# The pre-tokenizer pattern of Qwen2/2.5/3's tokenizer.json; the proof above is about it.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Every character that is or ever was White_Space, zero-width space and BOM (once Zs), and the
# ASCII separators \x1c-\x1f that str.isspace() counts: a superset of \s in any engine.
SPACES = frozenset(
    "\t\n\v\f\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u180e\u2028\u2029\u202f\u205f\u3000\ufeff"
    + "".join(map(chr, range(0x2000, 0x200C)))
)
_DIGITS = frozenset("0123456789")
_AFTER_NON_SPACE = frozenset(" \t0123456789")
# Punctuation of CJK text (Unicode 1.1, category P, compatibility decompositions only).
_CJK_PUNCTUATION = frozenset("、。〈〉《》「」『』【】〔〕！（），．：；？")
# Letter ranges assigned in Unicode 1.1/2.0 whose category (Lo) no version has changed:
# CJK unified ideographs (URO), hiragana, katakana, Hangul syllables.
_LETTER_RANGES = ((0x4E00, 0x9FA5), (0x3041, 0x3094), (0x30A1, 0x30FA), (0xAC00, 0xD7A3))
# Conjoining jamo: vowels and trailing consonants compose with what precedes them.
_JAMO_RANGES = ((0x1100, 0x11FF), (0xA960, 0xA97F), (0xD7B0, 0xD7FF))
# How far past the wanted length to look for a cut before trying a longer prefix.
SCAN_CHARS = 1024


def _in(cp: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= cp <= hi for lo, hi in ranges)


def _stable(ch: str) -> bool:
    """NFC never joins ``ch`` to what precedes it and leaves it unchanged (conservative)."""
    if ch < "\x80":
        return True  # no ASCII character decomposes or composes with a previous one
    if unicodedata.combining(ch) or _in(ord(ch), _JAMO_RANGES):
        return False
    category = unicodedata.category(ch)
    # Category M covers every combining-class-0 later element of a composition (tested);
    # Cn: a character newer than Python's table may be a mark in the tokenizer's.
    if category[0] == "M" or category in ("Cn", "Cs"):
        return False
    decomposition = unicodedata.decomposition(ch)
    return not decomposition or decomposition.startswith("<")


def _letter(ch: str) -> bool:
    """Surely ``\\p{L}`` in every Unicode version."""
    return ("a" <= ch <= "z") or ("A" <= ch <= "Z") or _in(ord(ch), _LETTER_RANGES)


def _non_letter(ch: str) -> bool:
    """Surely not ``\\p{L}`` in every Unicode version, and no case folding reaches a letter."""
    return (ch < "\x80" and not ch.isalpha()) or ch in _CJK_PUNCTUATION


def is_safe_cut(text: str, c: int) -> bool:
    """True where the lemma in the module docstring holds for ``text[:c]``."""
    if not 1 <= c < len(text) - 1:
        return False
    x, y = text[c - 1], text[c]
    if not (
        x in _DIGITS
        or (_letter(x) and _non_letter(y))
        or (x not in SPACES and y in _AFTER_NON_SPACE)
    ):
        return False
    return _stable(x) and _stable(y) and _stable(text[c + 1])


def safe_cut(text: str, start: int) -> int | None:
    """The first safe cut at or after ``start``, looking at most :data:`SCAN_CHARS` further."""
    for c in range(max(start, 1), min(start + SCAN_CHARS, len(text) - 1)):
        if is_safe_cut(text, c):
            return c
    return None
