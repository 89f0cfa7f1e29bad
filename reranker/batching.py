"""Grouping documents into forward passes under a token budget.

Passes are filled longest-first: sorting by length keeps similar lengths together (little
padding where attention pads), makes the largest pass run first (an out-of-memory shows up at
once) and bounds every pass by tokens rather than by a document count, so one long document
cannot take a batch of eight 32k-token neighbours with it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence


def length_order(lengths: Sequence[int], keys: Sequence[Hashable] | None = None) -> list[int]:
    """Indices sorted by length, longest first.

    Ties are broken by ``keys`` (e.g. the token ids) when given, so the same multiset of
    documents always lands in the same passes whatever their input order.
    """
    if keys is None:
        return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], keys[i], i))


def plan_passes(
    lengths: Sequence[int],
    *,
    max_tokens: int,
    max_items: int,
    keys: Sequence[Hashable] | None = None,
) -> list[list[int]]:
    """Split item indices into passes of at most ``max_items`` items and ``max_tokens`` tokens.

    An item longer than ``max_tokens`` gets a pass of its own (it cannot be split).
    """
    if max_tokens < 1 or max_items < 1:
        raise ValueError("max_tokens and max_items must be at least 1")
    passes: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in length_order(lengths, keys):
        n = lengths[i]
        if current and (used + n > max_tokens or len(current) >= max_items):
            passes.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        passes.append(current)
    return passes


def split_in_half(items: Sequence[int]) -> tuple[list[int], list[int]]:
    """For out-of-memory retries: two halves of a pass (each keeps the length order)."""
    mid = len(items) // 2
    return list(items[:mid]), list(items[mid:])
