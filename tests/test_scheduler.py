"""Cross-request batching, replicas, cancellation, progress and metrics (no Cog server)."""

from __future__ import annotations

import asyncio
import random

import pytest

from reranker import Reranker, Settings
from reranker.service import RerankService

QUERIES = ["capital of France?", "green tea benefits", "how do rerankers work?", "rust vs go"]


def docs_for(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    words = ["tea", "Paris", "model", "rank", "query", "green", "city", "token", "fast", "safe"]
    return [" ".join(rng.choices(words, k=rng.randint(1, 40))) for _ in range(n)]


@pytest.fixture(scope="module")
def service(model_dir):
    """Two CPU replicas behind one scheduler, with a small budget so passes are many."""
    settings = Settings(device="cpu", replicas=2, max_batch_tokens=600, warmup=False)
    svc = RerankService([Reranker.load(model_dir, settings=settings) for _ in range(2)])
    yield svc
    svc.close()


def assert_same_result(got, want):
    assert [r.index for r in got.results] == [r.index for r in want.results]
    for a, b in zip(got.results, want.results, strict=True):
        assert abs(a.score - b.score) <= 1e-5 and a.document == b.document
    assert got.usage == want.usage and got.total_documents == want.total_documents


async def gather_requests(service, specs):
    async def one(query, docs, top_k):
        return await service.rerank(query=query, documents=docs, top_k=top_k, say=lambda _: None)

    return await asyncio.gather(*(one(*s) for s in specs))


def test_concurrent_requests_share_passes_and_match_solo_runs(service, reranker):
    specs = [(QUERIES[i % 4], docs_for(i, 5 + 7 * i), [None, 3, 0][i % 3]) for i in range(8)]
    passes_before = sum(r.engine.passes for r in service.replicas)
    outputs = asyncio.run(gather_requests(service, specs))
    passes_run = sum(r.engine.passes for r in service.replicas) - passes_before
    for (query, docs, top_k), (result, metrics) in zip(specs, outputs, strict=True):
        assert_same_result(result, reranker.rank(query, docs, top_k=top_k))
        assert metrics.documents == len(docs) and metrics.forward_passes >= 1
    per_request = sum(m.forward_passes for _, m in outputs)
    assert passes_run < per_request  # some passes served several requests at once
    assert all(r.engine.passes > 0 for r in service.replicas)  # both replicas took work


def test_metrics_and_usage(service, reranker):
    docs = [*docs_for(99, 12), "word " * 3000]
    result, metrics = asyncio.run(service.rerank(query="q", documents=docs, say=lambda _: None))
    want = reranker.rank("q", docs)
    assert metrics.tokens == want.usage.total_tokens == result.usage.total_tokens
    assert metrics.truncated_documents == 0 and metrics.documents == 13
    assert metrics.tokenize_seconds >= 0 and metrics.model_seconds > 0
    result, metrics = asyncio.run(
        service.rerank(query="q", documents=docs, max_length=128, say=lambda _: None)
    )
    assert metrics.truncated_documents == result.usage.truncated_documents == 1


def test_progress_lines_for_long_requests(service):
    lines: list[str] = []
    docs = docs_for(5, 60)
    asyncio.run(service.rerank(query="q", documents=docs, say=lines.append))
    assert lines, "a request of many passes logs its progress"
    assert lines[-1].startswith("scored 60/60 documents (")
    assert all("tokens/s" in line for line in lines)


def test_the_event_loop_keeps_running_while_the_model_works(service):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        await service.rerank(query="q", documents=docs_for(6, 80), say=lambda _: None)
        task.cancel()
        return ticks

    assert asyncio.run(main()) > 5


def test_cancelled_request_leaves_the_queue_and_others_finish(service, reranker):
    big, small = docs_for(7, 400), docs_for(8, 6)

    async def main():
        progress = asyncio.Event()

        def on_line(_line):
            progress.set()

        big_task = asyncio.create_task(service.rerank(query="q", documents=big, say=on_line))
        await progress.wait()  # the big request is under way
        passes_at_cancel = sum(r.engine.passes for r in service.replicas)
        big_task.cancel()
        small_out = await service.rerank(query="q2", documents=small, say=lambda _: None)
        with pytest.raises(asyncio.CancelledError):
            await big_task
        await asyncio.sleep(0.3)  # let any pass already running finish
        return small_out, passes_at_cancel

    (small_result, _), passes_at_cancel = asyncio.run(main())
    assert_same_result(small_result, reranker.rank("q2", small))
    assert service.scheduler.queued_documents == 0
    # the big request alone needs dozens of passes; after cancelling, only a few more ran
    total_needed = len(
        reranker.with_settings(service.front.settings).engine.plan(
            reranker.engine.items(reranker.prepare("q", big).encoded), batch_size=256
        )
    )
    assert sum(r.engine.passes for r in service.replicas) - passes_at_cancel < total_needed // 2


def test_errors_reach_only_their_request(service):
    async def main():
        bad = service.rerank(query="", documents=["a"], say=lambda _: None)
        good = service.rerank(query="q", documents=["a", "b"], say=lambda _: None)
        return await asyncio.gather(bad, good, return_exceptions=True)

    bad, good = asyncio.run(main())
    assert isinstance(bad, ValueError) and str(bad).startswith("query")
    assert good[0].total_documents == 2
