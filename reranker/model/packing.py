"""Token ids -> one padding-free batch.

A pass is a list of :class:`Segment` objects: each holds the new tokens to run and, optionally,
the index of a cached context (the request's shared prompt prefix) that it continues. All new
tokens are concatenated into one ``(T,)`` row, so the linear layers never touch padding; the
attention backend is told where each segment starts and which context it sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, chain

import torch


@dataclass(frozen=True)
class Segment:
    """New tokens to run, continuing context ``context`` of the pass (or nothing)."""

    ids: Sequence[int]
    context: int | None = None


@dataclass(frozen=True)
class PackedBatch:
    input_ids: torch.Tensor  # (T,) new tokens of every segment, concatenated
    positions: torch.Tensor  # (T,) rotary positions: a segment starts after its context
    starts: list[int]  # offset of each segment in input_ids
    lengths: list[int]  # new tokens per segment
    contexts: list[int | None]  # context index per segment
    context_lengths: list[int]  # tokens per context of the pass
    last_index: torch.Tensor  # (S,) position of each segment's last token

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def num_segments(self) -> int:
        return len(self.lengths)

    def offset(self, segment: int) -> int:
        """Tokens before the segment's first new token (its context length)."""
        c = self.contexts[segment]
        return 0 if c is None else self.context_lengths[c]


def pack(
    segments: Sequence[Segment], context_lengths: Sequence[int], device: torch.device
) -> PackedBatch:
    if not segments:
        raise ValueError("a pass needs at least one segment")
    lengths = [len(s.ids) for s in segments]
    if min(lengths) < 1:
        raise ValueError("every segment needs at least one token")
    starts = [0, *accumulate(lengths)][:-1]
    contexts = [s.context for s in segments]
    offsets = [0 if c is None else context_lengths[c] for c in contexts]
    ids = torch.tensor(list(chain.from_iterable(s.ids for s in segments)), dtype=torch.long)
    lengths_t = torch.tensor(lengths)
    shift = torch.tensor([o - s for o, s in zip(offsets, starts, strict=True)])
    positions = torch.arange(ids.numel()) + torch.repeat_interleave(shift, lengths_t)
    last = torch.tensor(starts) + lengths_t - 1
    return PackedBatch(
        input_ids=ids.to(device, non_blocking=True),
        positions=positions.to(device, non_blocking=True),
        starts=starts,
        lengths=lengths,
        contexts=contexts,
        context_lengths=list(context_lengths),
        last_index=last.to(device, non_blocking=True),
    )
