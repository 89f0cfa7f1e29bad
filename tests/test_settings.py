"""Every RERANKER_* variable: valid values parse to the right type, invalid ones stop setup
with a message naming the variable (the one line a deployer sees in the setup log)."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from reranker import Settings
from reranker.config import SettingsError
from reranker.loading.weights import WeightsError
from reranker.service import RerankService

# (variable, raw value, parsed value): the parsed value's type is checked too.
VALID = [
    ("RERANKER_MODEL", " /models/qwen ", "/models/qwen"),
    ("RERANKER_MODEL", "Qwen/Qwen3-Reranker-8B", "Qwen/Qwen3-Reranker-8B"),
    ("RERANKER_WEIGHTS_URL", "https://example.com/w.tar", "https://example.com/w.tar"),
    ("RERANKER_HUB_REVISION", "main", "main"),
    ("RERANKER_CACHE_DIR", "/var/cache/r", "/var/cache/r"),
    ("RERANKER_DEVICE", "cpu", "cpu"),
    ("RERANKER_DEVICE", "cuda", "cuda"),
    ("RERANKER_DEVICE", "cuda:1", "cuda:1"),
    ("RERANKER_DTYPE", "float16", "float16"),
    ("RERANKER_DTYPE", "bfloat16", "bfloat16"),
    ("RERANKER_DTYPE", "float32", "float32"),
    ("RERANKER_ATTENTION", "auto", "auto"),
    ("RERANKER_ATTENTION", "varlen", "varlen"),
    ("RERANKER_ATTENTION", "sdpa", "sdpa"),
    ("RERANKER_PREFIX_REUSE", "auto", "auto"),
    ("RERANKER_PREFIX_REUSE", "on", "on"),
    ("RERANKER_PREFIX_REUSE", "off", "off"),
    ("RERANKER_MAX_BATCH_TOKENS", "8192", 8192),
    ("RERANKER_WARMUP", "false", False),
    ("RERANKER_WARMUP", "YES", True),
    ("RERANKER_COMPILE", "1", True),
    ("RERANKER_COMPILE", "off", False),
    ("RERANKER_QUANTIZATION", "none", "none"),
    ("RERANKER_QUANTIZATION", "fp8", "fp8"),
    ("RERANKER_REPLICAS", "2", 2),
    ("RERANKER_MAX_DOCUMENTS", "7", 7),
    ("RERANKER_MAX_DOCUMENT_CHARS", "1000", 1000),
    ("RERANKER_MAX_QUERY_CHARS", "50", 50),
    ("RERANKER_MAX_TOTAL_CHARS", "123456", 123456),
    ("RERANKER_MAX_REQUEST_TOKENS", " 99 ", 99),
    ("RERANKER_MAX_CHARS_IN_FLIGHT", "2000000", 2_000_000),
    ("RERANKER_MAX_TOKENS_IN_FLIGHT", "500000", 500_000),
    ("RERANKER_ADMISSION_TIMEOUT", "60", 60),
    ("RERANKER_MAX_PREFIX_TOKENS", "4096", 4096),
]

NO_CUDA = not torch.cuda.is_available()

# (variable, raw value, extra setup needed); every one must fail setup naming the variable.
INVALID = [
    ("RERANKER_MODEL", "/does/not/exist", None),
    ("RERANKER_MODEL", "./missing-relative", None),
    ("RERANKER_WEIGHTS_URL", "ftp://example.com/w.tar", None),
    ("RERANKER_WEIGHTS_URL", "http://127.0.0.1:9/w.tar", "no-model"),  # connection refused
    ("RERANKER_HUB_REVISION", "no-such-revision", "no-model"),  # offline: not in the cache
    ("RERANKER_CACHE_DIR", "{file}", "no-model"),  # a file, not a folder
    ("RERANKER_DEVICE", "gpu", None),
    ("RERANKER_DEVICE", "cuda:x", None),
    ("RERANKER_DEVICE", "CPU", None),
    ("RERANKER_DTYPE", "fp8", None),
    ("RERANKER_ATTENTION", "flash", None),
    ("RERANKER_PREFIX_REUSE", "sometimes", None),
    ("RERANKER_MAX_BATCH_TOKENS", "0", None),
    ("RERANKER_MAX_BATCH_TOKENS", "4k", None),
    ("RERANKER_WARMUP", "maybe", None),
    ("RERANKER_COMPILE", "2", None),
    ("RERANKER_QUANTIZATION", "int8", None),
    ("RERANKER_QUANTIZATION", "fp8-emulated", None),  # tests only, not a setting
    ("RERANKER_REPLICAS", "-1", None),
    ("RERANKER_MAX_DOCUMENTS", "lots", None),
    ("RERANKER_MAX_DOCUMENT_CHARS", "1.5", None),
    ("RERANKER_MAX_QUERY_CHARS", "0", None),
    ("RERANKER_MAX_TOTAL_CHARS", "1e6", None),
    ("RERANKER_MAX_REQUEST_TOKENS", "none", None),
    ("RERANKER_MAX_CHARS_IN_FLIGHT", "-5", None),
    ("RERANKER_MAX_TOKENS_IN_FLIGHT", "16M", None),
    ("RERANKER_ADMISSION_TIMEOUT", "0.5", None),
    ("RERANKER_MAX_PREFIX_TOKENS", "0", None),
]
if NO_CUDA:  # on a CPU-only machine these name a device the machine does not have
    INVALID += [
        ("RERANKER_DEVICE", "cuda", None),
        ("RERANKER_ATTENTION", "varlen", None),
        ("RERANKER_QUANTIZATION", "fp8", None),
    ]
# and varlen attention with an explicit CPU device, on any machine
INVALID_WITH = [
    ({"RERANKER_DEVICE": "cpu"}, "RERANKER_ATTENTION", "varlen"),
    ({"RERANKER_DEVICE": "cpu"}, "RERANKER_QUANTIZATION", "fp8"),
]

EVERY_VARIABLE = {f"RERANKER_{f.name.upper()}" for f in fields(Settings)}


def test_the_tables_cover_every_variable():
    assert {name for name, _, _ in VALID} == EVERY_VARIABLE
    assert {name for name, _, _ in INVALID} == EVERY_VARIABLE


@pytest.mark.parametrize("name,raw,expected", VALID)
def test_valid_values_parse_to_the_right_type(name, raw, expected):
    settings = Settings.from_env({name: raw})
    value = getattr(settings, name.removeprefix("RERANKER_").lower())
    assert value == expected and type(value) is type(expected)
    # nothing else moved
    others = {f.name: getattr(Settings(), f.name) for f in fields(Settings)}
    others.pop(name.removeprefix("RERANKER_").lower())
    assert {k: getattr(settings, k) for k in others} == others


def start_setup(env: dict[str, str]) -> None:
    """What Predictor.setup does (Settings.from_env, then RerankService.start)."""
    service = RerankService.start(Settings.from_env(env))
    service.close()
    raise AssertionError(f"setup succeeded with {env}")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No network, no baked weights/ in the working directory, an empty hub cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name,raw,extra", INVALID)
def test_invalid_values_fail_setup_naming_the_variable(offline, model_dir, name, raw, extra):
    cache_file = offline / "not-a-folder"
    cache_file.write_text("")
    env = {name: raw.replace("{file}", str(cache_file))}
    if extra != "no-model" and name != "RERANKER_MODEL":
        # a loadable model, so that a value that slips through validation reaches model
        # loading (and fails there with another message, or not at all)
        env.setdefault("RERANKER_MODEL", str(model_dir))
    env.setdefault("RERANKER_CACHE_DIR", str(offline / "cache"))
    with pytest.raises((SettingsError, WeightsError)) as info:
        start_setup(env)
    message = str(info.value)
    assert name in message, message
    assert "\n" not in message


@pytest.mark.parametrize("env,name,raw", INVALID_WITH)
def test_invalid_combinations_fail_setup_naming_the_variable(offline, model_dir, env, name, raw):
    with pytest.raises(SettingsError, match=f"^{name}={raw} needs a CUDA device"):
        start_setup({**env, name: raw, "RERANKER_MODEL": str(model_dir)})
