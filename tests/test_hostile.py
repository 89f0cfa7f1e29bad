"""Hostile and broken input: property-based API tests, settings, non-finite values, setup."""

from __future__ import annotations

import asyncio
import json
import math
import threading

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from devtools.hostile import documents, long_runs, text
from devtools.localserver import LocalCogServer, ServerError
from devtools.offline import save_random_model
from reranker import Settings
from reranker.config import SettingsError
from reranker.model.scorer import NonFiniteError
from reranker.service import RerankService

ARGUMENTS = ("query", "documents", "instruction", "top_k", "batch_size", "max_length")


def check_ranking(reranker, query, docs, instruction, top_k, max_length):
    try:
        result = reranker.rank(
            query, docs, instruction=instruction, top_k=top_k, max_length=max_length
        )
    except ValueError as exc:
        assert str(exc).split(" ")[0].split("[")[0].split("=")[0] in ARGUMENTS, str(exc)
        return None
    scores = [r.score for r in result.results]
    assert all(math.isfinite(s) and 0.0 <= s <= 1.0 for s in scores)
    assert all(math.isfinite(r.logit) for r in result.results)
    indices = [r.index for r in result.results]
    assert len(set(indices)) == len(indices)
    if not top_k:
        assert sorted(indices) == list(range(len(docs)))  # a permutation
    by_text: dict[str, set[float]] = {}
    full = reranker.score(query, docs, instruction=instruction, max_length=max_length)
    for doc, score in zip(docs, full, strict=True):
        by_text.setdefault(doc, set()).add(score)
    assert all(len(s) == 1 for s in by_text.values())  # duplicates score identically
    return result


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    query=st.one_of(text, long_runs),
    docs=documents,
    instruction=st.one_of(st.none(), text),
    top_k=st.one_of(st.none(), st.integers(-2, 12)),
    max_length=st.sampled_from([1, 50, 90, 128, 512, 8192, 32768, 32769]),
)
def test_arbitrary_unicode_never_breaks_the_api(
    reranker, query, docs, instruction, top_k, max_length
):
    first = check_ranking(reranker, query, docs, instruction, top_k, max_length)
    if first is not None:  # deterministic across calls
        assert first == reranker.rank(
            query, docs, instruction=instruction, top_k=top_k, max_length=max_length
        )


@example(value=None)
@example(value=0)
@example(value=3)
@example(value=1000)
@example(value=-1)
@example(value=2.0)
@example(value=True)
@settings(max_examples=60, deadline=None)
@given(
    value=st.one_of(
        st.none(),
        st.integers(),
        st.floats(),
        st.booleans(),
        st.binary(),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )
)
def test_wrong_types_are_value_errors(reranker, prompt_tokens, value):
    for name in ARGUMENTS:
        kwargs = {"query": "q", "documents": ["d"], name: value}
        query, docs = kwargs.pop("query"), kwargs.pop("documents")
        verdict = expected_verdict(name, value, prompt_tokens)
        try:
            reranker.rank(query, docs, **kwargs)
        except ValueError as exc:
            assert verdict != "valid", (name, value, str(exc))
            assert str(exc).startswith(name), str(exc)
        else:
            assert verdict != "invalid", f"{name}={value!r} was accepted"


@pytest.fixture(scope="module")
def prompt_tokens(recipe):
    """Tokens of the model card's prompt for query "q" and document "d" (the recipe's count)."""
    from devtools.reference import format_instruction

    (ids,) = recipe.input_ids([format_instruction(None, "q", "d")])
    return len(ids)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def expected_verdict(name: str, value, prompt_tokens: int) -> str:
    """What the README's input reference allows, written out independently of the code:
    "valid", "invalid", or "either" (max_length just below the prompt's own length, where
    truncating a one-token document to nothing is a judgement call)."""
    if name in ("query", "documents"):
        return "invalid"  # no value drawn here is a non-empty string / list of strings
    if name == "instruction":
        return "valid" if value is None else "invalid"
    if name == "top_k":
        return "valid" if value is None or (_is_int(value) and value >= 0) else "invalid"
    if name == "batch_size":
        return "valid" if _is_int(value) and value >= 1 else "invalid"
    assert name == "max_length"
    if not _is_int(value) or value > 32768 or value < prompt_tokens - 5:
        return "invalid"
    return "valid" if value >= prompt_tokens else "either"


def test_lone_surrogates_become_replacement_characters(reranker):
    assert reranker.score("q\ud800", ["a\udfffb"]) == reranker.score("q\ufffd", ["a\ufffdb"])


@pytest.mark.parametrize(
    "env,message",
    [
        ({"RERANKER_MAX_DOCUMENTS": "lots"}, "RERANKER_MAX_DOCUMENTS must be a positive integer"),
        ({"RERANKER_MAX_BATCH_TOKENS": "0"}, "RERANKER_MAX_BATCH_TOKENS must be a positive"),
        ({"RERANKER_ATTENTION": "flash"}, "RERANKER_ATTENTION must be one of auto, varlen, sdpa"),
        ({"RERANKER_DTYPE": "fp8"}, "RERANKER_DTYPE must be one of float16, bfloat16, float32"),
        ({"RERANKER_WARMUP": "maybe"}, "RERANKER_WARMUP must be true or false"),
        ({"RERANKER_PREFIX_REUSE": "sometimes"}, "RERANKER_PREFIX_REUSE must be one of"),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_settings_from_env_reads_every_field():
    s = Settings.from_env(
        {
            "RERANKER_MAX_DOCUMENTS": "7",
            "RERANKER_COMPILE": "false",
            "RERANKER_WARMUP": "0",
            "RERANKER_DTYPE": "bfloat16",
            "RERANKER_MODEL": " /models/x ",
            "RERANKER_REPLICAS": "2",
            "RERANKER_UNKNOWN": "ignored",
        }
    )
    assert (s.max_documents, s.compile, s.warmup, s.dtype) == (7, False, False, "bfloat16")
    assert (s.model, s.replicas) == ("/models/x", 2)
    assert Settings.from_env({}) == Settings()


def test_an_overflow_even_in_float32_fails_the_request_not_the_service(tmp_path, tokenizer):
    """float16 keeps float32 range (tests/test_float16.py); a prompt that overflows even with
    float32 activations (here: an embedding past float16's range, inf once loaded) fails its
    request with a clear message, and the worker lives on."""
    from safetensors.torch import load_file, save_file

    path = save_random_model(tmp_path / "hot", tokenizer=tokenizer, initializer_range=0.3)
    weights = load_file(path / "model.safetensors")
    weights["model.embed_tokens.weight"] *= 1e6
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    from reranker import Reranker

    service = RerankService(Reranker.load(path, device="cpu", dtype="float16", settings=Settings()))
    request = service.reranker.request("q", ["a", "b"])
    try:
        with pytest.raises(NonFiniteError, match=r"float16 .*\(set RERANKER_DTYPE\)$"):
            asyncio.run(service.rerank(request, say=lambda _: None))
        assert service.reranker.scheduler._threads[0].is_alive()
    finally:
        service.close()


# -- setup failures: one clear line in the SETUP_FAILED log ---------------------------------------


def broken_models(root, tokenizer):
    unreadable = save_random_model(root / "unreadable", tokenizer=tokenizer)
    (unreadable / "config.json").write_text("{ this is not json")
    no_yes = save_random_model(root / "no-yes", tokenizer=tokenizer)
    spec = json.loads((no_yes / "tokenizer.json").read_text())
    del spec["model"]["vocab"]["yes"]
    merges = [m.split(" ") if isinstance(m, str) else m for m in spec["model"]["merges"]]
    spec["model"]["merges"] = [m for m in merges if "yes" not in (m[0], m[1], m[0] + m[1])]
    (no_yes / "tokenizer.json").write_text(json.dumps(spec))
    return {
        "missing weights folder": (
            {"RERANKER_MODEL": str(root / "nowhere")},
            "WeightsError: RERANKER_MODEL=" + str(root / "nowhere") + " does not exist",
        ),
        "unreadable config": (
            {"RERANKER_MODEL": str(unreadable)},
            f"ModelLoadError: cannot load the tokenizer from {unreadable}",
        ),
        "tokenizer without yes": (
            {"RERANKER_MODEL": str(no_yes)},
            "TokenizerError: the tokenizer has no 'yes' token",
        ),
        "cuda without cuda": (
            {"RERANKER_MODEL": str(unreadable), "RERANKER_DEVICE": "cuda"},
            "SettingsError: RERANKER_DEVICE=cuda, but this machine has no usable CUDA",
        ),
    }


@pytest.mark.server
def test_setup_failures_are_one_clear_line(tmp_path, tokenizer):
    import torch

    cases = broken_models(tmp_path, tokenizer)
    if torch.cuda.is_available():
        del cases["cuda without cuda"]
    outcomes: dict[str, str] = {}

    def start(name, env):
        server = LocalCogServer(env)
        try:
            server.start(timeout=240)
            outcomes[name] = "started"
        except ServerError:
            health = server.health()
            outcomes[name] = health["status"] + "\n" + health.get("setup", {}).get("logs", "")
        finally:
            server.stop()

    threads = [threading.Thread(target=start, args=(n, e)) for n, (e, _) in cases.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for name, (_, line) in cases.items():
        status, _, logs = outcomes[name].partition("\n")
        assert status == "SETUP_FAILED", (name, outcomes[name])
        assert line in logs, (name, logs)
        assert "Traceback" not in logs
