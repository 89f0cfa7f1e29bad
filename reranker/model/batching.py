"""Grouping documents into forward passes under a token budget.

Passes are filled longest-first: sorting by length keeps similar lengths together (little
padding where attention pads), makes the largest pass run first (an out-of-memory shows up at
once) and bounds every pass by tokens rather than by a document count, so one long document
cannot take a batch of eight 32k-token neighbours with it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass


def length_order(lengths: Sequence[int], keys: Sequence[Hashable] | None = None) -> list[int]:
    """Indices sorted by length, longest first.

    Ties are broken by ``keys`` (e.g. the token ids) when given, so the same multiset of
    documents always lands in the same passes whatever their input order.
    """
    if keys is None:
        return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], keys[i], i))


@dataclass
class PassFill:
    """The rule for filling one pass: at most ``max_tokens`` tokens and ``max_items`` items.

    The first item is always admitted, so an item longer than ``max_tokens`` gets a pass of its
    own (it cannot be split). The scheduler fills every document pass with it; ``plan_passes``
    plans the shared-prefix passes with it.
    """

    max_tokens: int
    max_items: int
    tokens: int = 0
    items: int = 0

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.max_items < 1:
            raise ValueError("max_tokens and max_items must be at least 1")

    def admits(self, n: int) -> bool:
        return self.items == 0 or (
            self.tokens + n <= self.max_tokens and self.items < self.max_items
        )

    def add(self, n: int) -> None:
        self.tokens += n
        self.items += 1


def plan_passes(
    lengths: Sequence[int],
    *,
    max_tokens: int,
    max_items: int,
    keys: Sequence[Hashable] | None = None,
) -> list[list[int]]:
    """Split item indices, longest first, into passes filled by :class:`PassFill`."""
    passes: list[list[int]] = []
    fill = PassFill(max_tokens, max_items)
    for i in length_order(lengths, keys):
        if not fill.admits(lengths[i]):
            fill = PassFill(max_tokens, max_items)
        if fill.items == 0:
            passes.append([])
        passes[-1].append(i)
        fill.add(lengths[i])
    return passes


def split_in_half(items: Sequence[int]) -> tuple[list[int], list[int]]:
    """For out-of-memory retries: two halves of a pass (each keeps the length order)."""
    mid = len(items) // 2
    return list(items[:mid]), list(items[mid:])
