"""The official Qwen3-Reranker prompt, as pure functions.

The model card scores PREFIX + BODY + SUFFIX, where BODY is
``<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {doc}``. The body is split here
into a *head* (everything up to ``<Document>:``) and a *tail* (``" " + doc``): the head is the
same for every document of a request, so its keys and values can be computed once. The split
falls on a pre-tokenizer boundary (``:`` is followed by a space, which always starts a new
pre-token), so tokenizing head and tail separately gives exactly the ids of the whole body.
"""

from __future__ import annotations

PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
# The tokens whose logits make the score: P(yes) = softmax([no, yes])[1].
YES_TOKEN = "yes"
NO_TOKEN = "no"


def resolve_instruction(instruction: str | None) -> str:
    """``None`` means the model card's default; any string, even empty, is used as given."""
    return DEFAULT_INSTRUCTION if instruction is None else instruction


def format_head(instruction: str, query: str) -> str:
    """The part of the body shared by every document of a request."""
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>:"


def format_tail(document: str) -> str:
    """The part of the body that belongs to one document."""
    return f" {document}"


def format_body(instruction: str, query: str, document: str) -> str:
    """The model card's ``format_instruction``: head + tail."""
    return format_head(instruction, query) + format_tail(document)
