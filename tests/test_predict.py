"""predict.py called directly, as Cog's worker calls it."""

from __future__ import annotations

import asyncio
import inspect

import pytest

import predict
from reranker import config
from reranker.text import prompt


@pytest.fixture(scope="module")
def predictor(model_dir):
    mp = pytest.MonkeyPatch()
    mp.setenv("RERANKER_MODEL", str(model_dir))
    p = predict.Predictor()
    p.setup()
    mp.undo()
    yield p
    p.service.close()


def call(predictor, **inputs):
    """Fill in the Input() defaults the way Cog does, then await predict()."""
    params = inspect.signature(predict.Predictor.predict).parameters
    args = {n: p.default.default for n, p in params.items() if n != "self" and n not in inputs}
    args = {n: v for n, v in args.items() if v is not ...} | inputs
    return asyncio.run(predictor.predict(**args))


def test_predict_returns_the_output_model(predictor, reranker):
    docs = ["Paris is in France.", "Tokyo is in Japan.", "Paris", "Madrid"]
    out = call(predictor, query="Where is Paris?", documents=docs, top_k=3)
    assert isinstance(out, predict.Output)
    want = reranker.rank("Where is Paris?", docs, top_k=3).to_dict()
    got = out.model_dump()
    assert [r["index"] for r in got["results"]] == [r["index"] for r in want["results"]]
    assert (
        max(
            abs(a["score"] - b["score"])
            for a, b in zip(got["results"], want["results"], strict=False)
        )
        < 1e-6
    )
    assert got["usage"] == want["usage"] and got["total_documents"] == 4


def test_predict_chunks_long_documents_on_request(predictor, reranker):
    docs = ["Where is Paris? Paris is in France. " * 40, "Tokyo is in Japan."]
    out = call(predictor, query="Where is Paris?", documents=docs, top_k=0, max_length=150)
    assert "windows" not in out.model_dump()["results"][0]  # truncate: the old shape
    out = call(
        predictor,
        query="Where is Paris?",
        documents=docs,
        top_k=0,
        max_length=150,
        long_documents="chunk",
    )
    want = reranker.rank("Where is Paris?", docs, max_length=150, long_documents="chunk")
    got = out.model_dump()
    assert [(r["index"], r["windows"], r["best_span"]) for r in got["results"]] == [
        (r.index, r.windows, list(r.best_span)) for r in want.results
    ]
    assert got["usage"]["windows"] == want.usage.windows > 2


def test_predict_validates_what_it_receives(predictor):
    with pytest.raises(ValueError, match=r"^documents must be a list of strings, got str"):
        call(predictor, query="q", documents="a string")
    with pytest.raises(ValueError, match=r"^documents\[0\] must be a string, got int"):
        call(predictor, query="q", documents=[1])
    with pytest.raises(ValueError, match=r"^top_k must be at least 0"):
        call(predictor, query="q", documents=["a"], top_k=-3)


def test_predict_constants_equal_the_package_constants():
    """predict.py repeats them as literals because Cog's schema generator reads them statically."""
    assert predict.DEFAULT_INSTRUCTION == prompt.DEFAULT_INSTRUCTION
    assert predict.DEFAULT_BATCH_SIZE == config.DEFAULT_BATCH_SIZE
    assert predict.DEFAULT_MAX_LENGTH == config.DEFAULT_MAX_LENGTH
    assert predict.MAX_LENGTH_LIMIT == config.MAX_LENGTH_LIMIT
    assert predict.DEFAULT_BATCH_SIZE >= 8  # the seed's batch size


def test_output_model_matches_the_library_result():
    from reranker.request.results import RankedDocument, RerankResult, Usage

    fields = {f for f in RerankResult.__dataclass_fields__}
    assert fields == set(predict.Output.model_fields)
    assert set(RankedDocument.__dataclass_fields__) == set(predict.RankedDocument.model_fields)
    assert set(Usage.__dataclass_fields__) == set(predict.Usage.model_fields)
