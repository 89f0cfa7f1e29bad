"""One frozen settings object, read from ``RERANKER_*`` environment variables.

Every knob of the service lives here with its default and the reason for it; the Cog
predictor, the CLI and the library all read the same object (``Settings.from_env()``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

HUB_MODEL_ID = "Qwen/Qwen3-Reranker-8B"
# The revision the hub download is pinned to (main as of 2025-06, the release checkpoint).
HUB_REVISION = "5fa94080caafeaa45a15d11f969d7978e087a3db"

MAX_LENGTH_LIMIT = 32768  # the model handles 32k tokens (max_position_embeddings is 40960)
DEFAULT_MAX_LENGTH = 8192  # the model card's max_length
DEFAULT_BATCH_SIZE = 256  # documents per forward pass at most; the token budget binds first
# What happens to a document whose prompt exceeds max_length: "truncate" (the model card: its
# end is cut) or "chunk" (scored whole, as overlapping windows; the best window counts).
LONG_DOCUMENTS_NAMES = ("truncate", "chunk")
# Tokens two consecutive windows share when the caller names none: enough for a paragraph to
# lie whole in one window, at most 1/8 of the window so the extra work stays under ~14%.
DEFAULT_CHUNK_OVERLAP = 256
# Tokens per forward pass. On an H100 the 8B model is at full GEMM speed from ~8k tokens per
# pass; 32768 lets the longest allowed document run in one pass within the budget, and its
# activations (~4 GB) fit beside the weights on any 40 GB+ card. See bench/ for the sweep.
DEFAULT_MAX_BATCH_TOKENS_CUDA = 32768
DEFAULT_MAX_BATCH_TOKENS_CPU = 4096  # fastest measured on a 2-core CPU (bench/results/cpu-*)

ENV_PREFIX = "RERANKER_"


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    # Where the weights come from (see reranker.weights for the resolution order).
    model: str | None = None
    weights_url: str | None = None
    hub_revision: str = HUB_REVISION
    cache_dir: str | None = None
    # How the model runs.
    device: str | None = None  # cuda when available, else cpu
    dtype: str | None = None  # float16 on CUDA (the design's choice), float32 on CPU
    attention: str = "auto"  # auto | varlen | sdpa
    prefix_reuse: str = "auto"  # auto | on | off
    max_batch_tokens: int | None = None  # None: DEFAULT_MAX_BATCH_TOKENS_{CUDA,CPU}
    warmup: bool = True  # one pass at the token budget during setup (CUDA only)
    # torch.compile the layer math (fuses norms, RoPE, SiLU): +30% on an H100 (bench/results).
    # None: on for CUDA, off for CPU (where it needs a C++ toolchain and gains little).
    compile: bool | None = None
    # none | fp8 (experimental): W8A8 FP8 GEMMs, weights quantized at load; needs a GPU with
    # FP8 tensor cores (compute capability 8.9+). See reranker/model/fp8.py.
    quantization: str = "none"
    replicas: int | None = None  # model copies; None: one per visible GPU (one on CPU)
    # Request limits, checked before any model work. Memory does not grow with them (passes are
    # bounded by tokens); they bound the time and host memory one request can take.
    max_documents: int = 10_000
    max_document_chars: int = 1_000_000
    max_query_chars: int = 100_000  # also applies to the instruction
    max_total_chars: int = 50_000_000
    max_request_tokens: int = 4_000_000  # about 100 s of H100 time (bench/results)
    # Admission (reranker/admission.py): what all requests together may hold at once; beyond
    # it requests wait in arrival order. Worst case ~160 bytes of host memory per character
    # tokenizing (tokenizer and ids) and 63 per admitted token (bench/results/memory-*): about
    # 2.6 + 1 GB at these values. 16M tokens queue ~400 s of H100 work: the GPU never idles.
    max_chars_in_flight: int = 16_000_000
    max_tokens_in_flight: int = 16_000_000
    # Seconds a request may wait for room before it fails: more than the worst legal queue
    # (15 requests of 4M tokens ahead, about 1,500 s on an H100).
    admission_timeout: int = 1800
    # Prompt-prefix tokens (template head, instruction, query) whose keys and values one
    # replica keeps on its device for the requests it is serving (reranker/scheduler.py).
    # 144 KiB a token on the 8B model in 16 bits: 16384 tokens are 2.25 GiB, which still fits
    # a 24 GB card beside the weights and a full pass, and 16 requests with 1,000-token
    # queries. A request that would pass it waits for earlier ones to finish (in arrival
    # order); one larger runs alone.
    max_prefix_tokens: int = 16384

    def batch_tokens(self, device_type: str) -> int:
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        if device_type == "cuda":
            return DEFAULT_MAX_BATCH_TOKENS_CUDA
        return DEFAULT_MAX_BATCH_TOKENS_CPU

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``RERANKER_<FIELD>`` for every field; unset or empty keeps the default."""
        env = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            name = ENV_PREFIX + f.name.upper()
            raw = env.get(name, "").strip()
            if raw:
                values[f.name] = _parse(name, raw)
        settings = cls(**values)
        settings.validate()
        return settings

    @property
    def limits(self) -> Limits:
        return Limits(
            max_documents=self.max_documents,
            max_document_chars=self.max_document_chars,
            max_query_chars=self.max_query_chars,
            max_total_chars=self.max_total_chars,
            max_request_tokens=self.max_request_tokens,
        )

    def validate(self) -> None:
        try:
            check_choice(env_name("attention"), self.attention, ATTENTION_NAMES)
            check_choice(env_name("prefix_reuse"), self.prefix_reuse, PREFIX_REUSE_NAMES)
            check_choice(env_name("quantization"), self.quantization, QUANTIZATION_NAMES)
            if self.dtype is not None:
                check_choice(env_name("dtype"), self.dtype, DTYPE_NAMES)
            if self.device is not None:
                check_device_name(env_name("device"), self.device)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        if self.weights_url is not None and not self.weights_url.startswith(
            ("http://", "https://")
        ):
            raise SettingsError(
                f"{env_name('weights_url')} must be an http:// or https:// URL, "
                f"not {self.weights_url!r}"
            )


@dataclass(frozen=True)
class Limits:
    """What one request may hold; checked when a request is built (reranker.request)."""

    max_documents: int = Settings.max_documents
    max_document_chars: int = Settings.max_document_chars
    max_query_chars: int = Settings.max_query_chars
    max_total_chars: int = Settings.max_total_chars
    max_request_tokens: int = Settings.max_request_tokens


def env_name(field: str) -> str:
    """The environment variable that sets ``Settings.<field>``."""
    return ENV_PREFIX + field.upper()


DTYPE_NAMES = ("float16", "bfloat16", "float32")
ATTENTION_NAMES = ("auto", "varlen", "sdpa")
PREFIX_REUSE_NAMES = ("auto", "on", "off")
QUANTIZATION_NAMES = ("none", "fp8")


def check_choice(label: str, value: object, allowed: tuple[str, ...]) -> str:
    """The one rule for named choices; ``label`` is what the caller calls the field."""
    if value not in allowed:
        raise ValueError(f"{label} must be one of {', '.join(allowed)}, not {value!r}")
    return value  # type: ignore[return-value]


def check_device_name(label: str, value: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
        raise ValueError(f"{label} must be cpu, cuda or cuda:N, not {value!r}")
    return value


_BOOLS = {"warmup", "compile"}
_INTS = {"max_batch_tokens", "replicas", "max_documents", "max_document_chars"}
_INTS |= {"max_query_chars", "max_total_chars", "max_request_tokens"}
_INTS |= {"max_chars_in_flight", "max_tokens_in_flight", "admission_timeout"}
_INTS |= {"max_prefix_tokens"}


def _parse(name: str, raw: str):
    field = name.removeprefix(ENV_PREFIX).lower()
    if field in _BOOLS:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name} must be true or false, not {raw!r}")
    if field in _INTS:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a positive integer, not {raw!r}") from None
        if value < 1:
            raise SettingsError(f"{name} must be a positive integer, not {raw!r}")
        return value
    return raw
