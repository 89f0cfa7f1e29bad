"""Pass planning under a token budget."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reranker.model.batching import length_order, plan_passes


@given(
    lengths=st.lists(st.integers(1, 500), min_size=1, max_size=60),
    max_tokens=st.integers(1, 2000),
    max_items=st.integers(1, 20),
)
def test_passes_cover_every_item_once_within_limits(lengths, max_tokens, max_items):
    passes = plan_passes(lengths, max_tokens=max_tokens, max_items=max_items)
    flat = [i for p in passes for i in p]
    assert sorted(flat) == list(range(len(lengths)))
    for p in passes:
        assert 0 < len(p) <= max_items
        tokens = sum(lengths[i] for i in p)
        assert tokens <= max_tokens or len(p) == 1  # only a lone oversize item exceeds it
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first


def test_passes_are_filled_greedily():
    assert plan_passes([5, 5, 5, 5], max_tokens=10, max_items=8) == [[0, 1], [2, 3]]
    assert plan_passes([5, 5, 5, 5], max_tokens=100, max_items=3) == [[0, 1, 2], [3]]
    assert plan_passes([50, 1, 1], max_tokens=10, max_items=8) == [[0], [1, 2]]


def test_ties_are_broken_by_key_so_input_order_does_not_matter():
    keys = ["b", "a", "c"]
    assert length_order([3, 3, 3], keys) == [1, 0, 2]
    assert length_order([3, 3, 3]) == [0, 1, 2]
