"""Session fixtures: the real Qwen3 tokenizer and tiny random Qwen3 models, saved to disk."""

from __future__ import annotations

import os

import pytest

from devtools.offline import build_tokenizer, save_random_model
from reranker import Reranker, Settings

# Tiny models with the real vocabulary. initializer_range is raised so that scores spread
# over (0, 1) instead of sitting at 0.5, which would make parity checks weak.
MODELS = {
    # untied embeddings, grouped KV heads (4 query heads share 2 KV heads), like the 8B
    "untied": dict(tie_word_embeddings=False, initializer_range=0.3),
    # tied embeddings (as in the 0.6B), no KV grouping, three layers
    "tied": dict(
        tie_word_embeddings=True,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        num_hidden_layers=3,
        initializer_range=0.3,
        seed=1,
    ),
}


# The slow tiers (pyproject.toml's markers): `uv run pytest -m "not slow"` leaves them out.
SLOW = {"server", "subprocess", "fakecuda", "bench", "fuzz", "soak"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW & {mark.name for mark in item.iter_markers()}:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True, scope="session")
def _clean_environment():
    """Tests see default settings, whatever RERANKER_* the developer's shell exports."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("RERANKER_")}
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("models")
    return {
        name: save_random_model(root / name, tokenizer=tokenizer, **spec)
        for name, spec in MODELS.items()
    }


@pytest.fixture(scope="session")
def model_dir(model_dirs):
    return model_dirs["untied"]


@pytest.fixture(scope="session")
def reranker(model_dir):
    return Reranker.load(model_dir, device="cpu", settings=Settings())


@pytest.fixture(scope="session")
def recipe(model_dir):
    from devtools.reference import Recipe

    return Recipe(model_dir)
