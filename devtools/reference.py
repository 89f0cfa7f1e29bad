"""The model card's transformers recipe, kept as written there (the parity oracle).

Deliberately independent of the ``reranker`` package: its own prompt strings, the
tokenizer's own call with right truncation, left padding, full-vocabulary logits and a
2-way log_softmax, in float32 on CPU. The one addition is ``literal``: tokenizing the body
with a tokenizer that has no added tokens at all, to score text that spells control tokens
"as literal characters".
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from devtools.offline import build_backend

PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
TASK = "Given a web search query, retrieve relevant passages that answer the query"


def format_instruction(instruction, query, doc):
    if instruction is None:
        instruction = TASK
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"


class Recipe:
    def __init__(self, model_dir=None, max_length: int = 8192, *, tokenizer=None, model=None):
        """From a checkpoint directory (float32), or from an in-memory tokenizer and model."""
        if model_dir is not None:
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        tokenizer.padding_side = "left"
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.token_false_id = self.tokenizer.convert_tokens_to_ids("no")
        self.token_true_id = self.tokenizer.convert_tokens_to_ids("yes")
        self.max_length = max_length
        self.prefix_tokens = self.tokenizer.encode(PREFIX, add_special_tokens=False)
        self.suffix_tokens = self.tokenizer.encode(SUFFIX, add_special_tokens=False)
        self._literal = None

    def literal_tokenizer(self):
        if self._literal is None:
            self._literal = PreTrainedTokenizerFast(
                tokenizer_object=build_backend(added_tokens=False)
            )
        return self._literal

    def input_ids(self, pairs, max_length=None, literal=False):
        max_length = max_length or self.max_length
        tok = self.literal_tokenizer() if literal else self.tokenizer
        inputs = tok(
            pairs,
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            max_length=max_length - len(self.prefix_tokens) - len(self.suffix_tokens),
        )
        return [self.prefix_tokens + ele + self.suffix_tokens for ele in inputs["input_ids"]]

    def process_inputs(self, pairs, max_length=None, literal=False):
        ids = self.input_ids(pairs, max_length, literal)
        inputs = self.tokenizer.pad(
            {"input_ids": ids}, padding=True, return_tensors="pt", max_length=max_length
        )
        return {key: value.to(self.model.device) for key, value in inputs.items()}

    @torch.no_grad()
    def compute_logits(self, inputs, last_only=False):
        # last_only: the same values without the card's full-vocabulary logits at every
        # position (which would take 20 GB of RAM at 32k tokens).
        extra = {"logits_to_keep": 1} if last_only else {}
        batch_scores = self.model(**inputs, **extra).logits[:, -1, :]
        true_vector = batch_scores[:, self.token_true_id]
        false_vector = batch_scores[:, self.token_false_id]
        batch_scores = torch.stack([false_vector, true_vector], dim=1)
        batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
        return batch_scores[:, 1].exp().tolist()

    def score(
        self,
        query,
        documents,
        instruction=None,
        max_length=None,
        batch_size=8,
        literal=False,
        last_only=False,
    ):
        pairs = [format_instruction(instruction, query, doc) for doc in documents]
        scores = []
        for i in range(0, len(pairs), batch_size):
            inputs = self.process_inputs(pairs[i : i + batch_size], max_length, literal)
            scores += self.compute_logits(inputs, last_only)
        return scores
