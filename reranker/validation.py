"""Field checks for building a request (reranker.request) and for library arguments.

Every failure is a ``ValueError`` whose message starts with the argument's name, because the
same message reaches an HTTP client through Cog's ``"error"`` field.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .config import Limits


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def valid_unicode(text: str) -> str:
    """``text`` with unpaired surrogates (not encodable as UTF-8) replaced by U+FFFD.

    A Python string can hold them (e.g. from ``"\\ud800"`` in JSON); the tokenizer cannot.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(name: str, value: Any, *, max_chars: int, allow_empty: bool) -> str:
    if value is None:
        raise ValueError(f"{name} is required")
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {_kind(value)}")
    if not allow_empty and not value.strip():
        raise ValueError(f"{name} must not be empty")
    if len(value) > max_chars:
        raise ValueError(f"{name} has {len(value):,} characters; the limit is {max_chars:,}")
    return valid_unicode(value)


def check_int(name: str, value: Any, *, low: int, high: int | None = None) -> int:
    # bool is an int subclass; True as a batch size is a client bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {_kind(value)}")
    if value < low or (high is not None and value > high):
        bound = f"at least {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {_kind(value)}")
    return value


def check_pairs(pairs: Any) -> list[tuple[str, str]]:
    """``(query, document)`` pairs as a list of tuples (lists of two strings are fine too)."""
    if isinstance(pairs, str | bytes) or not isinstance(pairs, Sequence):
        raise ValueError(f"pairs must be a list of (query, document) pairs, got {_kind(pairs)}")
    if len(pairs) == 0:
        raise ValueError("pairs must not be empty")
    out = []
    for i, pair in enumerate(pairs):
        if (
            isinstance(pair, str | bytes)
            or not isinstance(pair, Sequence)
            or len(pair) != 2
            or not all(isinstance(x, str) for x in pair)
        ):
            raise ValueError(f"pairs[{i}] must be a (query, document) pair of strings")
        out.append((pair[0], pair[1]))
    return out


def check_documents(documents: Any, limits: Limits) -> list[str]:
    if documents is None:
        raise ValueError("documents is required")
    if isinstance(documents, str | bytes) or not isinstance(documents, Sequence):
        raise ValueError(f"documents must be a list of strings, got {_kind(documents)}")
    if len(documents) == 0:
        raise ValueError("documents must not be empty")
    if len(documents) > limits.max_documents:
        raise ValueError(
            f"documents has {len(documents):,} items; the limit is {limits.max_documents:,}"
        )
    total = 0
    docs = []
    for i, doc in enumerate(documents):
        if not isinstance(doc, str):
            raise ValueError(f"documents[{i}] must be a string, got {_kind(doc)}")
        if len(doc) > limits.max_document_chars:
            raise ValueError(
                f"documents[{i}] has {len(doc):,} characters; "
                f"the limit is {limits.max_document_chars:,}"
            )
        total += len(doc)
        docs.append(valid_unicode(doc))
    if total > limits.max_total_chars:
        raise ValueError(
            f"documents hold {total:,} characters in all; the limit is {limits.max_total_chars:,}"
        )
    return docs


def check_token_budget(num_tokens: int, limits: Limits, *, complete: bool = True) -> None:
    """``complete=False``: ``num_tokens`` counts only the documents tokenized so far."""
    if num_tokens > limits.max_request_tokens:
        some = "" if complete else "at least "
        raise ValueError(
            f"documents make {some}{num_tokens:,} prompt tokens after truncation; the limit per "
            f"request is {limits.max_request_tokens:,} (send fewer documents or lower max_length)"
        )
