"""Work items -> forward passes -> logits, on one model replica.

The engine decides per document whether to continue the request's shared prompt prefix (its
keys and values computed once) or run the prompt whole, builds those prefixes, runs the passes
the scheduler fills, re-scores 16-bit overflows with float32 activations, and survives
out-of-memory errors by splitting a pass in halves; only a single prompt that cannot fit
fails, with a message that says so. Planning passes is the scheduler's job.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from ..config import PREFIX_REUSE_NAMES, Settings, check_choice
from ..text.tokenization import EncodedRequest
from ..validation import check_int
from .batching import plan_passes, split_in_half
from .packing import Segment, pack
from .scorer import ContextKV, QwenScorer

log = logging.getLogger(__name__)

R = TypeVar("R")


class DocumentTooLargeError(RuntimeError):
    """A single prompt does not fit in accelerator memory, even alone."""


class BudgetTooLargeError(RuntimeError):
    """The configured token budgets do not fit on this device (found at warm-up)."""

    def __init__(self, detail: str, settings: tuple[str, ...]) -> None:
        self.detail, self.settings = detail, settings  # what did not fit; what to lower
        super().__init__(f"{detail}; lower {' or '.join(settings)}")

    def __reduce__(self):  # picklable and copyable despite the two-argument constructor
        return type(self), (self.detail, self.settings)

    def naming(self, name: Callable[[str], str]) -> BudgetTooLargeError:
        """The same error with each setting called ``name(setting)`` (an env variable)."""
        return BudgetTooLargeError(self.detail, tuple(map(name, self.settings)))


@dataclass(frozen=True, eq=False)
class Item:
    """New token ids to score, continuing ``context`` (a cached prefix) or nothing."""

    ids: tuple[int, ...]
    context: ContextKV | None = None

    @property
    def num_tokens(self) -> int:
        """Tokens the recipe would run for this prompt (context included)."""
        return len(self.ids) + (0 if self.context is None else self.context.num_tokens)

    def whole(self) -> Item:
        """The same prompt with its context as plain tokens (for the safe mode)."""
        return self if self.context is None else Item(self.context.ids + self.ids)


@dataclass(frozen=True)
class PassResult:
    """Logits of a pass's items (their order) and which items the safe mode re-scored."""

    logits: list[float]
    rescored: list[int]


class Engine:
    """One model replica: runs the passes the scheduler plans, within ``max_batch_tokens``."""

    def __init__(
        self,
        scorer: QwenScorer,
        *,
        max_batch_tokens: int,
        prefix_reuse: str = "auto",
        max_prefix_tokens: int = Settings.max_prefix_tokens,
    ) -> None:
        self.scorer = scorer
        self.max_batch_tokens = check_int("max_batch_tokens", max_batch_tokens, low=1)
        self.prefix_reuse = check_choice("prefix_reuse", prefix_reuse, PREFIX_REUSE_NAMES)
        # cached prefix tokens the scheduler lets this replica hold at once (see scheduler)
        self.max_prefix_tokens = check_int("max_prefix_tokens", max_prefix_tokens, low=1)
        self.passes = 0  # forward passes run so far (a counter for metrics)
        self.rescored = 0  # prompts re-scored with float32 activations after an overflow

    # -- per request ---------------------------------------------------------------------

    def reuses_prefix(self, encoded: EncodedRequest) -> list[bool]:
        """Per document: continue the shared prefix's cached keys and values, or run it whole.

        On CUDA reuse pays as soon as two documents share the prefix. On CPU a continued
        document's attention goes through a materialized mask, which costs more than
        recomputing a short prefix for a long document, so there a document continues the
        prefix only when it is at most four times the prefix's length (measured:
        bench/results/cpu-*.txt). Decided per document, so one long document cannot switch a
        request of short ones off reuse, nor pull itself into it.
        """
        docs = encoded.documents
        mode = self.prefix_reuse
        if mode != "auto":
            return [mode == "on"] * len(docs)
        if len(docs) < 2:
            return [False] * len(docs)
        if self.scorer.device.type == "cuda":
            return [True] * len(docs)
        limit = 4 * len(encoded.context)
        reuse = [len(d) <= limit for d in docs]
        return reuse if sum(reuse) >= 2 else [False] * len(docs)

    # -- passes --------------------------------------------------------------------------

    def contexts(self, id_lists: Sequence[Sequence[int]]) -> list[ContextKV]:
        """Keys and values of each prefix, computed in as few passes as the budget allows."""
        lengths = [len(ids) for ids in id_lists]
        out: list[ContextKV | None] = [None] * len(id_lists)
        for indices in plan_passes(lengths, max_tokens=self.max_batch_tokens, max_items=1 << 30):
            built = self._split_on_oom(
                [Item(tuple(id_lists[i])) for i in indices], self._context_pass
            )
            for i, ctx in zip(indices, built, strict=True):
                out[i] = ContextKV(ctx.k, ctx.v, tuple(id_lists[i]))
        return out  # type: ignore[return-value]

    def run(self, items: Sequence[Item]) -> PassResult:
        """One planned pass (split further only if it runs out of memory).

        A 16-bit prompt whose logit comes out non-finite is re-scored alone with float32
        activations (:meth:`QwenScorer.safe_logits`); if that overflows too, its logit stays
        non-finite and the caller's finiteness check fails its request.
        """
        items = list(items)
        logits = self._split_on_oom(items, self._score_pass)
        bad = [i for i, x in enumerate(logits) if not math.isfinite(x)]
        if not bad or not self.scorer.can_rescore:
            return PassResult(logits, [])
        log.warning(
            "%d of %d prompts overflowed in %s; re-scoring them with float32 activations",
            len(bad),
            len(items),
            str(self.scorer.dtype).removeprefix("torch."),
        )
        safe = self._split_on_oom([items[i].whole() for i in bad], self._safe_pass)
        for i, value in zip(bad, safe, strict=True):
            logits[i] = value
        self.rescored += len(bad)
        return PassResult(logits, bad)

    def _score_pass(self, items: list[Item]) -> list[float]:
        slots: dict[int, int] = {}
        contexts: list[ContextKV] = []
        segments = []
        for it in items:
            slot = None
            if it.context is not None:
                slot = slots.setdefault(id(it.context), len(contexts))
                if slot == len(contexts):
                    contexts.append(it.context)
            segments.append(Segment(it.ids, slot))
        batch = pack(segments, [c.num_tokens for c in contexts], self.scorer.device)
        self.passes += 1
        return self.scorer.logits(batch, contexts).cpu().tolist()

    def _safe_pass(self, items: list[Item]) -> list[float]:
        batch = pack([Segment(it.ids) for it in items], [], self.scorer.device)
        self.passes += 1
        return self.scorer.safe_logits(batch).cpu().tolist()

    def _context_pass(self, items: list[Item]) -> list[ContextKV]:
        batch = pack([Segment(it.ids) for it in items], [], self.scorer.device)
        self.passes += 1
        return self.scorer.contexts(batch)

    def _split_on_oom(self, items: list[Item], run: Callable[[list[Item]], list[R]]) -> list[R]:
        try:
            return run(items)
        except torch.OutOfMemoryError:
            pass  # leave the except block first so the failed pass's tensors can be freed
        self.release_memory()
        if len(items) == 1:
            raise DocumentTooLargeError(
                f"a prompt of {items[0].num_tokens:,} tokens does not fit in GPU memory even "
                "alone; lower max_length"
            )
        log.warning("out of memory on a pass of %d prompts; retrying in halves", len(items))
        first, second = split_in_half(range(len(items)))
        return self._split_on_oom([items[i] for i in first], run) + self._split_on_oom(
            [items[i] for i in second], run
        )

    def release_memory(self) -> None:
        if self.scorer.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- setup ---------------------------------------------------------------------------

    def warmup(self) -> None:
        """One pass at the full token budget continuing as many cached prefix tokens as the
        scheduler may keep: budgets too large for this card fail at boot rather than on a
        user's request."""
        try:
            self._warmup_passes()
        except torch.OutOfMemoryError:
            pass  # leave the except block first so the failed pass's tensors can be freed
        else:
            return
        self.release_memory()
        free = ""
        if self.scorer.device.type == "cuda":
            free_bytes, total = torch.cuda.mem_get_info(self.scorer.device)
            free = f" ({free_bytes / 2**30:.1f} of {total / 2**30:.1f} GiB free after loading)"
        raise BudgetTooLargeError(
            f"a pass of {self.max_batch_tokens} tokens beside {self.max_prefix_tokens} cached "
            f"prefix tokens does not fit on {self.scorer.device}{free}",
            ("max_batch_tokens", "max_prefix_tokens"),
        )

    def _warmup_passes(self) -> None:
        filler = 13  # any ordinary token id
        started = time.perf_counter()
        (context,) = self._context_pass([Item((filler,) * 64)])
        # the first pass traces and compiles the layer graphs when compile is on: its seconds
        # are reported as ``compile``, the remaining passes' as ``warmup`` (scorer.setup_seconds)
        compiled = getattr(self.scorer, "compiled", False)
        first = self._record("compile" if compiled else "first pass", started)
        # As many cached prefix tokens as the scheduler lets this replica keep, continued by a
        # full pass (which also copies the contexts it continues). Not every runtime shape:
        # many segments continuing long prefixes gather more keys per layer; out-of-memory
        # splitting covers those.
        held = self.scorer.blank_context(self.max_prefix_tokens)
        self._score_pass([Item((filler,) * self.max_batch_tokens, held)])
        del held
        # one and several segments: settles compiled graphs (if any) before real traffic
        self._score_pass([Item((filler,) * 7, context), Item((filler,) * 5)])
        self._record("warmup", first)

    def _record(self, step: str, started: float) -> float:
        """Store the seconds since ``started`` (device work included) as a setup step."""
        device = self.scorer.device
        if device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        steps = getattr(self.scorer, "setup_seconds", None)
        if steps is not None:
            steps[step] = now - started
        return now
