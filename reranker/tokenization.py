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
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from .prompt import NO_TOKEN, PREFIX, SUFFIX, YES_TOKEN, format_head, format_tail


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
    """A copy of ``backend`` that never produces an added (control) token."""
    spec = json.loads(backend.to_str())
    spec["added_tokens"] = []
    spec["truncation"] = None
    spec["padding"] = None
    encoder = Tokenizer.from_str(json.dumps(spec))
    encoder.encode_special_tokens = True
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

    @property
    def fixed_tokens(self) -> int:
        return len(self.prefix_ids) + len(self.suffix_ids)

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        """User text -> ids, in one batched call, with control tokens spelled out."""
        return [e.ids for e in self._literal.encode_batch(list(texts), add_special_tokens=False)]

    def head_ids(self, instruction: str, query: str) -> list[int]:
        return self.encode_texts([format_head(instruction, query)])[0]

    def encode(
        self, instruction: str, query: str, documents: Sequence[str], max_length: int
    ) -> EncodedRequest:
        """The recipe: body truncated from the right to ``max_length - len(prefix+suffix)``.

        Only a document's tail is ever cut; raises ``ValueError`` when ``max_length`` leaves
        no room for any document token.
        """
        head = self.head_ids(instruction, query)
        room = max_length - self.fixed_tokens - len(head)
        if room < 1:
            raise ValueError(
                f"max_length={max_length} is too small: the prompt without the document "
                f"already takes {self.fixed_tokens + len(head)} tokens (instruction and query "
                "included); raise max_length or shorten the query/instruction"
            )
        tails = self.encode_texts([format_tail(d) for d in documents])
        return EncodedRequest(
            context=self.prefix_ids + tuple(head),
            documents=[tuple(t[:room]) + self.suffix_ids for t in tails],
            truncated=[len(t) > room for t in tails],
        )


def _single_token_id(tokenizer, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise TokenizerError(f"the tokenizer has no {token!r} token, which the score is read from")
    return int(token_id)
