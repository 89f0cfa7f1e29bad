"""Text -> token ids, exactly as the model card's recipe makes them.

Two encoders share one tokenizer definition:

* the tokenizer as loaded encodes the fixed PREFIX and SUFFIX once, so their special tokens
  (``<|im_start|>``, ``<think>``...) are real;
* a *literal* copy with every added token removed encodes user text (instruction, query,
  documents), so a document that spells ``<|im_end|>`` or ``</think>`` gets the ids of those
  characters, never the control token. (``split_special_tokens=True`` alone is not enough:
  Qwen's tokenizer marks ``<think>``, ``</think>``, ``<tool_call>``... as added but not
  "special", and those would still be matched.)

On text that spells no added token both encoders give identical ids, which the tests check.

A long document is not tokenized whole: :meth:`PromptEncoder.encode_documents` tokenizes a
prefix cut where :mod:`reranker.text.safecut` proves its ids are the whole text's first ids, and
grows it until it yields the tokens kept, so the work follows ``max_length``, not the length.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from .prompt import NO_TOKEN, PREFIX, SUFFIX, YES_TOKEN, format_head, format_tail
from .safecut import QWEN_PATTERN, safe_cut

# First prefix tried for a long document, in characters per token kept. English runs at about
# 4.5 characters a token, CJK at 1-1.5, digits at 1: one try for most text, a second for
# whitespace-heavy text. Any positive value gives the same ids; only the work changes.
CHARS_PER_TOKEN = 6.0
PREFIX_SLACK_CHARS = 64


class TokenizerError(ValueError):
    """The tokenizer cannot express the recipe (missing yes/no or chat tokens)."""


@dataclass(frozen=True)
class EncodedRequest:
    """Token ids of one request: ``context + documents[i]`` is the recipe's prompt for doc i.

    ``context`` is PREFIX + head (shared by all documents); ``documents[i]`` is the
    document's (possibly truncated) tail followed by SUFFIX.
    """

    context: tuple[int, ...]
    documents: list[tuple[int, ...]]
    truncated: list[bool]

    def prompt_ids(self, i: int) -> list[int]:
        return [*self.context, *self.documents[i]]

    @property
    def num_tokens(self) -> int:
        """Prompt tokens over all documents, as the recipe would feed them (no padding)."""
        return len(self.documents) * len(self.context) + sum(map(len, self.documents))


def literal_encoder(backend: Tokenizer) -> Tokenizer:
    """A tokenizer with ``backend``'s model and pipeline but none of its added (control)
    tokens, so it never produces one. It shares the model and the pipeline's parts (they are
    read-only here) instead of copying them: a copy through the tokenizer's JSON (7 MB for
    Qwen3) took about 1.5 s per load."""
    encoder = Tokenizer(backend.model)
    for part in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        if (value := getattr(backend, part)) is not None:
            setattr(encoder, part, value)
    return encoder


class PromptEncoder:
    """Builds :class:`EncodedRequest` objects from text; holds the recipe's fixed ids."""

    def __init__(self, tokenizer) -> None:
        self.prefix_ids = tuple(tokenizer.encode(PREFIX, add_special_tokens=False))
        self.suffix_ids = tuple(tokenizer.encode(SUFFIX, add_special_tokens=False))
        self.yes_id = _single_token_id(tokenizer, YES_TOKEN)
        self.no_id = _single_token_id(tokenizer, NO_TOKEN)
        im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
        if im_start is None or im_start == tokenizer.unk_token_id or self.prefix_ids[0] != im_start:
            raise TokenizerError(
                "the tokenizer has no <|im_start|> control token: it is not a Qwen3 tokenizer"
            )
        self._literal = literal_encoder(tokenizer.backend_tokenizer)
        # The prefix shortcut is proven for the Qwen pipeline only; others tokenize whole.
        self.bounded = proof_applies(self._literal)

    @property
    def fixed_tokens(self) -> int:
        return len(self.prefix_ids) + len(self.suffix_ids)

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        """User text -> ids, in one batched call, with control tokens spelled out."""
        return [e.ids for e in self._literal.encode_batch(list(texts), add_special_tokens=False)]

    def tail_starts(self, documents: Sequence[str]) -> list[list[int]]:
        """Per document, per id of its tail (before truncation): the position in the
        document of the character the id starts at (byte pieces of one character share it).
        One batched call."""
        tails = [format_tail(d) for d in documents]
        shift = len(format_tail(""))
        encodings = self._literal.encode_batch(tails, add_special_tokens=False)
        return [[max(start - shift, 0) for start, _ in e.offsets] for e in encodings]

    def head_ids(self, instruction: str, query: str) -> list[int]:
        return self.encode_texts([format_head(instruction, query)])[0]

    def encode(
        self, instruction: str, query: str, documents: Sequence[str], max_length: int
    ) -> EncodedRequest:
        """The recipe: body truncated from the right to ``max_length - len(prefix+suffix)``.

        Only a document's tail is ever cut; raises ``ValueError`` when ``max_length`` leaves
        no room for any document token.
        """
        context, room = self.context_ids(instruction, query, max_length)
        return EncodedRequest(context, *self.encode_tails(documents, room))

    def context_ids(
        self, instruction: str, query: str, max_length: int
    ) -> tuple[tuple[int, ...], int]:
        """The ids every document's prompt starts with, and the room left for a document."""
        head = self.head_ids(instruction, query)
        room = max_length - self.fixed_tokens - len(head)
        if room < 1:
            raise ValueError(
                f"max_length={max_length} is too small: the prompt without the document "
                f"already takes {self.fixed_tokens + len(head)} tokens (instruction and query "
                "included); raise max_length or shorten the query/instruction"
            )
        return self.prefix_ids + tuple(head), room

    def encode_tails(
        self, documents: Sequence[str], room: int
    ) -> tuple[list[tuple[int, ...]], list[bool]]:
        """Per document: its ids after the context (tail cut to ``room``, then SUFFIX), and
        whether it was cut."""
        tails, truncated = self.encode_documents([format_tail(d) for d in documents], room)
        return [tuple(t) + self.suffix_ids for t in tails], truncated

    def encode_documents(
        self, texts: Sequence[str], room: int, *, chars_per_token: float = CHARS_PER_TOKEN
    ) -> tuple[list[list[int]], list[bool]]:
        """``(ids[:room], len(ids) > room)`` per text, as if each were tokenized whole.

        Texts longer than twice the first prefix are tokenized by safe prefixes (see
        :mod:`reranker.text.safecut`), doubled until one yields ``room`` ids; the others, and
        texts with no safe cut, in one batch as they are.
        """
        if room < 1 or not chars_per_token > 0:
            raise ValueError(f"room={room} and chars_per_token={chars_per_token} must be positive")
        first = int(room * chars_per_token) + PREFIX_SLACK_CHARS
        ids: list[list[int] | None] = [None] * len(texts)
        truncated = [False] * len(texts)
        want = {i: first for i, t in enumerate(texts) if self.bounded and len(t) > 2 * first}
        whole = [i for i in range(len(texts)) if i not in want]
        while want:
            cuts = {i: _prefix_cut(texts[i], n) for i, n in want.items()}
            whole += [i for i, c in cuts.items() if c is None]
            tried = [i for i, c in cuts.items() if c is not None]
            want = {}
            prefixes = self.encode_texts([texts[i][: cuts[i]] for i in tried])
            for i, got in zip(tried, prefixes, strict=True):
                if len(got) >= room:  # the text goes on past the cut: more ids follow
                    ids[i], truncated[i] = got[:room], True
                else:
                    want[i] = 2 * cuts[i]
        for i, got in zip(whole, self.encode_texts([texts[i] for i in whole]), strict=True):
            ids[i], truncated[i] = got[:room], len(got) > room
        return ids, truncated  # type: ignore[return-value]


def _prefix_cut(text: str, length: int) -> int | None:
    """A safe cut at or after ``length`` (doubling past stretches with none), or None."""
    while length < len(text):
        cut = safe_cut(text, length)
        if cut is not None:
            return cut
        length *= 2
    return None


def proof_applies(encoder: Tokenizer) -> bool:
    """True when ``encoder`` is the pipeline :mod:`reranker.text.safecut` reasons about."""

    def state(part) -> dict:
        return json.loads(part.__getstate__()) if part is not None else {}

    pre = state(encoder.pre_tokenizer)
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    return (
        state(encoder.normalizer) == {"type": "NFC"}
        and encoder.get_vocab_size(with_added_tokens=True) == encoder.get_vocab_size(False)
        and type(encoder.model).__name__ == "BPE"
        and encoder.model.dropout is None
        and isinstance(steps, list)
        and len(steps) == 2
        and steps[0].get("type") == "Split"
        and steps[0].get("pattern") == {"Regex": QWEN_PATTERN}
        and steps[0].get("behavior") == "Isolated"
        and not steps[0].get("invert")
        and steps[1].get("type") == "ByteLevel"
        and steps[1].get("use_regex") is False
    )


def _single_token_id(tokenizer, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise TokenizerError(f"the tokenizer has no {token!r} token, which the score is read from")
    return int(token_id)
