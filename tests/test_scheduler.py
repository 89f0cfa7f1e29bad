"""Cross-request batching, replicas, cancellation, progress and metrics (no Cog server)."""

from __future__ import annotations

import asyncio
import gc
import itertools
import math
import random
import threading
import time
import weakref
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from devtools.offline import save_random_model
from reranker import Reranker, Settings
from reranker.model.engine import DocumentTooLargeError, Engine
from reranker.model.scorer import NonFiniteError
from reranker.request.prepare import RerankRequest
from reranker.runtime import loop
from reranker.runtime import progress as progress_module
from reranker.runtime import queued as queued_module
from reranker.runtime.scheduler import Scheduler
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
    svc = RerankService.start(replace(settings, model=str(model_dir)))
    assert len(svc.reranker.engines) == 2
    yield svc
    svc.close()


async def ask(service, *, say, **fields):
    """One request through the service, built as predict.py builds it."""
    return await service.rerank(RerankRequest.build(service.limits, **fields), say=say)


def solo_logits(reranker, prepared):
    """The request's logits per document, run alone."""
    return asyncio.run(reranker.alogits(prepared))


def assert_same_result(got, want):
    assert [r.index for r in got.results] == [r.index for r in want.results]
    for a, b in zip(got.results, want.results, strict=True):
        assert abs(a.score - b.score) <= 1e-5 and a.document == b.document
    assert got.usage == want.usage and got.total_documents == want.total_documents


async def gather_requests(service, specs):
    async def one(query, docs, top_k):
        return await ask(service, query=query, documents=docs, top_k=top_k, say=lambda _: None)

    return await asyncio.gather(*(one(*s) for s in specs))


def test_concurrent_requests_share_passes_and_match_solo_runs(service, reranker):
    specs = [(QUERIES[i % 4], docs_for(i, 5 + 7 * i), [None, 3, 0][i % 3]) for i in range(8)]
    passes_before = sum(e.passes for e in service.reranker.engines)
    outputs = asyncio.run(gather_requests(service, specs))
    passes_run = sum(e.passes for e in service.reranker.engines) - passes_before
    for (query, docs, top_k), (result, metrics) in zip(specs, outputs, strict=True):
        assert_same_result(result, reranker.rank(query, docs, top_k=top_k))
        assert metrics.documents == len(docs) and metrics.forward_passes >= 1
    per_request = sum(m.forward_passes for _, m in outputs)
    assert passes_run < per_request  # some passes served several requests at once
    assert all(e.passes > 0 for e in service.reranker.engines)  # both replicas took work


def test_pass_observers_see_each_pass_once_and_never_fail_a_request(service, reranker, monkeypatch):
    """What ``/metrics`` times passes with: one record per ``Engine.run`` (prefix builds are
    not scored passes). Faults seen failing: an observer's exception reaching the requests of
    the pass (no guard around the call); a record per request share of a pass."""
    seen, runs = [], []

    def broken(record):
        raise RuntimeError("a metrics bug")

    for engine in service.reranker.engines:
        run = engine.run
        monkeypatch.setattr(engine, "run", lambda items, run=run: runs.append(1) or run(items))
    observers = service.reranker.scheduler.pass_observers
    observers += [seen.append, broken]
    specs = [
        (QUERIES[i % 4], [f"{i}.{j} {d}" for j, d in enumerate(docs_for(i, 9))], None)
        for i in range(4)
    ]
    try:
        outputs = asyncio.run(gather_requests(service, specs))
    finally:
        del observers[-2:]
    assert len(seen) == len(runs) >= 2
    assert sum(r.documents for r in seen) == sum(len(docs) for _, docs, _ in specs)
    assert {r.replica for r in seen} <= {0, 1}
    assert all(r.seconds > 0 and r.tokens >= r.documents for r in seen)
    for (query, docs, _), (result, _) in zip(specs, outputs, strict=True):
        # float32 sums depend on what shares the pass: 1e-4, not assert_same_result's 1e-5
        want = reranker.score(query, docs)
        assert len(result.results) == len(docs)
        assert all(abs(r.score - want[r.index]) <= 1e-4 for r in result.results)


def test_metrics_and_usage(service, reranker):
    docs = [*docs_for(99, 12), "word " * 3000]
    result, metrics = asyncio.run(ask(service, query="q", documents=docs, say=lambda _: None))
    want = reranker.rank("q", docs)
    assert metrics.tokens == want.usage.total_tokens == result.usage.total_tokens
    assert metrics.truncated_documents == 0 and metrics.documents == 13
    assert metrics.tokenize_seconds > 0 and metrics.model_seconds > 0
    result, metrics = asyncio.run(
        ask(service, query="q", documents=docs, max_length=128, say=lambda _: None)
    )
    assert metrics.truncated_documents == result.usage.truncated_documents == 1


def test_progress_lines_for_long_requests(service):
    lines: list[str] = []
    docs = docs_for(5, 60)
    asyncio.run(ask(service, query="q", documents=docs, say=lines.append))
    assert lines, "a request of many passes logs its progress"
    assert lines[-1].startswith("scored 60/60 documents (")
    assert all("tokens/s" in line for line in lines)


def test_progress_lines_are_rate_limited(service):
    """At most one line per PROGRESS_INTERVAL_S (plus the final one), however many passes:
    batch_size=1 makes 60 passes, far more than the seconds they take."""
    stamps: list[tuple[float, str]] = []
    docs = [f"item {i} " + d for i, d in enumerate(docs_for(9, 60))]
    started = time.perf_counter()
    _, metrics = asyncio.run(
        ask(
            service,
            query="q",
            documents=docs,
            batch_size=1,
            say=lambda line: stamps.append((time.perf_counter(), line)),
        )
    )
    elapsed = time.perf_counter() - started
    interval = progress_module.LOG_INTERVAL_S
    assert metrics.forward_passes >= 60
    assert stamps[-1][1].startswith("scored 60/60 documents (60 passes")
    assert len(stamps) <= 2 + elapsed / interval, (len(stamps), elapsed)
    times = [t for t, _ in stamps[:-1]]  # the final line is always shown
    assert all(b - a >= interval - 0.01 for a, b in itertools.pairwise(times)), times


def test_the_event_loop_keeps_running_while_the_model_works(service):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        await ask(service, query="q", documents=docs_for(6, 80), say=lambda _: None)
        task.cancel()
        return ticks

    assert asyncio.run(main()) > 5


def test_tokenization_runs_off_the_event_loop(service, monkeypatch):
    """Tokenizing 10k documents takes a while: it must not run on the event loop's thread
    (every other request, health check and cancellation waits on that thread)."""
    encoder = service.reranker.encoder
    seen: list[threading.Thread] = []
    real_encode = encoder.encode_tails

    def observed_encode(*args, **kwargs):
        seen.append(threading.current_thread())
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(encoder, "encode_tails", observed_encode)

    async def main():
        loop_thread = threading.current_thread()
        await ask(service, query="q", documents=["a", "b"], say=lambda _: None)
        return loop_thread

    loop_thread = asyncio.run(main())
    assert len(seen) == 1 and seen[0] is not loop_thread


def test_cancelled_request_leaves_the_queue_and_others_finish(service, reranker):
    # batch_size=1: one pass per document, 3,000 passes. Long by construction: even at a
    # millisecond a pass it runs for seconds, while the cancel follows its first pass.
    big = [f"doc {i}: " + d for i, d in enumerate(docs_for(7, 3000))]
    small = docs_for(8, 6)

    async def main():
        progress = asyncio.Event()

        def on_line(_line):
            progress.set()

        big_task = asyncio.create_task(
            ask(service, query="q", documents=big, batch_size=1, say=on_line)
        )
        await progress.wait()  # the big request is under way
        passes_at_cancel = sum(e.passes for e in service.reranker.engines)
        big_task.cancel()
        small_out = await ask(service, query="q2", documents=small, say=lambda _: None)
        with pytest.raises(asyncio.CancelledError):
            await big_task
        await asyncio.sleep(0.3)  # let any pass already running finish
        return small_out, passes_at_cancel

    (small_result, _), passes_at_cancel = asyncio.run(main())
    assert_same_result(small_result, reranker.rank("q2", small))
    assert service.reranker.scheduler.queued_documents == 0
    # the big request alone needs dozens of passes; after cancelling, only a few more ran
    total_needed = len(big)  # one pass per document
    assert sum(e.passes for e in service.reranker.engines) - passes_at_cancel < total_needed // 2


def test_errors_reach_only_their_request(service):
    async def main():
        bad = ask(service, query="", documents=["a"], say=lambda _: None)
        good = ask(service, query="q", documents=["a", "b"], say=lambda _: None)
        return await asyncio.gather(bad, good, return_exceptions=True)

    bad, good = asyncio.run(main())
    assert isinstance(bad, ValueError) and str(bad).startswith("query")
    assert good[0].total_documents == 2


# -- one request's failure inside a shared pass ------------------------------------------------

RARE = " volcano"  # one token (65206) of the real vocabulary; in no other test document


@pytest.fixture(scope="module")
def broken_model(tmp_path_factory, tokenizer):
    """A float32 checkpoint whose embedding row for RARE is NaN: any document containing it
    comes out non-finite in every dtype and mode, the others are untouched."""
    from safetensors.torch import load_file, save_file

    (token,) = tokenizer.encode(RARE, add_special_tokens=False)
    path = save_random_model(
        tmp_path_factory.mktemp("broken") / "m", tokenizer=tokenizer, initializer_range=0.3
    )
    weights = load_file(path / "model.safetensors")
    weights["model.embed_tokens.weight"][token] = float("nan")
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return Reranker.load(path, device="cpu", settings=Settings())


class MemoryLimit:
    """The real scorer on a pretend device that holds at most ``limit`` tokens per pass
    (bigger passes raise the OutOfMemoryError CUDA raises): an environment fault."""

    def __init__(self, scorer, limit: int):
        self._scorer, self.limit = scorer, limit

    def __getattr__(self, name):
        return getattr(self._scorer, name)

    def logits(self, batch, contexts=()):
        if batch.num_tokens > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self._scorer.logits(batch, contexts)


async def in_one_pass_many(scheduler: Scheduler, work):
    """Await ``scheduler.logits_many(...)`` with all its requests queued before the worker
    may take any (see :func:`in_one_pass`)."""
    with scheduler._cond:
        task = asyncio.ensure_future(work)
        while not scheduler._waiting:
            await asyncio.sleep(0)
    return await task


async def in_one_pass(scheduler: Scheduler, requests):
    """Submit every request before the worker may take any work, so that its first pass
    holds documents of all of them (the worker waits on the scheduler's lock; the lock is
    re-entrant, so the requests can enqueue from this thread while it is held)."""
    with scheduler._cond:
        tasks = [asyncio.create_task(scheduler.logits(e, batch_size=256)) for e in requests]
        while len(scheduler._waiting) < len(tasks):
            await asyncio.sleep(0)
    return await asyncio.gather(*tasks, return_exceptions=True)


GOOD_REQUESTS = [("capital of France?", docs_for(21, 5)), ("green tea", docs_for(22, 4))]


@pytest.mark.parametrize("fault", ["non-finite document", "document too large"])
def test_a_document_failing_inside_a_shared_pass_fails_only_its_request(broken_model, fault):
    if fault == "non-finite document":
        bad_docs = ["a calm lake", f"the{RARE} erupted", "a quiet field"]
        scorer, error = broken_model.engine.scorer, NonFiniteError
    else:
        bad_docs = ["a calm lake", "lava " * 400, "a quiet field"]  # 400+ tokens: never fits
        scorer, error = MemoryLimit(broken_model.engine.scorer, limit=300), DocumentTooLargeError
    engine = Engine(scorer, max_batch_tokens=100_000)  # one pass takes everything
    scheduler = Scheduler([engine])
    requests = [(q, d) for q, d in GOOD_REQUESTS]
    requests.insert(1, ("what erupted?", bad_docs))
    encoded = [broken_model.prepare(broken_model.request(q, d)).encoded for q, d in requests]
    try:
        results = asyncio.run(in_one_pass(scheduler, encoded))
        assert isinstance(results[1], error), results[1]
        for (query, docs), got in zip(requests[::2], results[::2], strict=True):
            assert not isinstance(got, BaseException), got
            logits, _ = got
            want, _ = solo_logits(
                broken_model, broken_model.prepare(broken_model.request(query, docs))
            )
            assert max(abs(a - b) for a, b in zip(logits, want, strict=True)) <= 1e-5
        # the worker survived and serves the next request
        assert scheduler.workers[0].is_alive()
        again, _ = asyncio.run(scheduler.logits(encoded[0], batch_size=256))
        assert max(abs(a - b) for a, b in zip(again, results[0][0], strict=True)) <= 1e-5
    finally:
        scheduler.close()


def test_close_fails_the_requests_still_queued(reranker):
    """Fault seen failing: close() that only stops the workers (the caller waits forever;
    here the wait_for bound turns that into a TimeoutError)."""
    scheduler = Scheduler(reranker.engines)
    encoded = reranker.prepare(reranker.request("q", docs_for(3, 40))).encoded

    async def main():
        with scheduler._cond:  # the worker cannot take the request before close()
            task = asyncio.create_task(scheduler.logits(encoded, batch_size=1))
            while not scheduler._waiting:
                await asyncio.sleep(0)
            scheduler.close(timeout=0)  # the worker waits for the lock held here: no join
        return await asyncio.wait_for(task, timeout=30)

    with pytest.raises(RuntimeError, match=r"^the reranker is shut down$"):
        asyncio.run(main())
    with pytest.raises(RuntimeError, match=r"^the reranker is shut down$"):
        asyncio.run(scheduler.logits(encoded, batch_size=1))  # and nothing new is accepted


def test_an_interrupted_blocking_caller_leaves_nothing_queued(reranker):
    """Ctrl-C in the library (here: raised from the progress callback, which runs in the
    caller's thread, after the first pass) drops the request's remaining documents before
    it reaches the caller; the next call runs normally. Faults seen failing: loop.run not
    cancelling its coroutine on an exception; logits_many without its cancel on
    CancelledError; loop.run not waiting for the coroutine to unwind (documents still
    queued when the exception arrives)."""
    scheduler = Scheduler(reranker.engines)
    encoded = reranker.prepare(reranker.request("q", docs_for(4, 30))).encoded

    def interrupt(done, total, stats):
        raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run(
                lambda post: scheduler.logits(encoded, batch_size=1, on_progress=post), interrupt
            )
        assert scheduler.queued_documents == 0
        logits, stats = loop.run(lambda _: scheduler.logits(encoded, batch_size=4))
        assert stats.documents == len(logits) == 30
    finally:
        scheduler.close()


def test_the_final_progress_line_is_shown_once_when_the_loop_lags(service):
    """The event loop falls behind the worker (its first progress line blocks it for 3 s,
    while the remaining passes finish): the events handled later still report the count
    of their own pass. Fault seen failing: counting done documents when an event is handled
    (two "scored 60/60" lines)."""
    lines: list[str] = []

    def slow_say(line: str) -> None:
        if not lines:
            time.sleep(3)
        lines.append(line)

    docs = [f"lagging {i} " + d for i, d in enumerate(docs_for(10, 60))]
    asyncio.run(ask(service, query="q", documents=docs, batch_size=1, say=slow_say))
    assert sum(line.startswith("scored 60/60 ") for line in lines) == 1, lines


# -- the bound on cached prefixes (device memory that grows with requests in flight) -------


def long_query(words: int) -> str:
    return " ".join(f"term{i}" for i in range(words))


def test_cached_prefixes_stay_within_the_bound_and_results_match_solo(reranker):
    """Twelve requests with long queries at once, on a replica that may keep about three of
    their prefixes: the cached tokens never pass the bound, a prefix larger than the whole
    bound still runs (alone), and every result equals its solo run. Faults seen failing:
    `_take` without the room check (peak far over the bound); room never given back (the
    requests after the first few wait forever: here the timeout)."""
    specs = [(long_query(20 + 9 * i), docs_for(30 + i, 6)) for i in range(12)]
    specs.append((long_query(400), docs_for(50, 4)))  # its prefix alone passes the bound
    prepared = [reranker.prepare(reranker.request(q, d)) for q, d in specs]
    contexts = [len(p.encoded.context) for p in prepared]
    bound = 3 * contexts[5]
    assert contexts[-1] > bound and sum(contexts) > 4 * bound
    engine = Engine(
        reranker.engine.scorer, max_batch_tokens=600, prefix_reuse="on", max_prefix_tokens=bound
    )
    scheduler = Scheduler([engine])
    try:
        work = in_one_pass(scheduler, [p.encoded for p in prepared])
        results = asyncio.run(asyncio.wait_for(work, timeout=120))
        assert 0 < scheduler.prefix_peak[0] <= max(bound, contexts[-1])
        assert scheduler.prefix_held(0) == 0  # every request gave its room back
    finally:
        scheduler.close()
    for p, got in zip(prepared, results, strict=True):
        assert not isinstance(got, BaseException), got
        want, _ = solo_logits(reranker, p)
        assert max(abs(a - b) for a, b in zip(got[0], want, strict=True)) <= 1e-5


def test_a_request_waiting_for_prefix_room_is_not_overtaken(reranker):
    """A's prefix is cached; B's does not fit beside it and waits; C's would fit beside A's,
    but C came after B, so C waits too (B cannot be starved by a stream of small prefixes).
    Observed through the held room during the first pass (read by the scorer, on the worker).
    Fault seen failing: C taking room beside A (held A + C)."""
    a, b, c = (
        reranker.prepare(reranker.request(long_query(n), docs_for(60 + n, k)))
        for n, k in [(30, 6), (90, 2), (5, 2)]
    )
    sizes = [len(r.encoded.context) for r in (a, b, c)]
    engine = Engine(
        reranker.engine.scorer,
        max_batch_tokens=100_000,
        prefix_reuse="on",
        max_prefix_tokens=sizes[1] + sizes[2],  # B and C fit together, A and B do not
    )
    held: list[int] = []

    class Recording(MemoryLimit):
        def logits(self, batch, contexts=()):
            held.append(scheduler.prefix_held(0))
            return self._scorer.logits(batch, contexts)

    engine.scorer = Recording(engine.scorer, limit=1 << 30)
    scheduler = Scheduler([engine])
    try:
        work = scheduler.logits_many([a.encoded, b.encoded, c.encoded], batch_size=2)
        results = asyncio.run(in_one_pass_many(scheduler, work))
    finally:
        scheduler.close()
    assert held[0] == sizes[0], (held, sizes)  # A alone in the first passes
    assert scheduler.prefix_peak[0] == sizes[1] + sizes[2]  # then B and C together
    for r, (got, _) in zip((a, b, c), results, strict=True):
        want, _ = solo_logits(reranker, r)
        assert max(abs(x - y) for x, y in zip(got, want, strict=True)) <= 1e-5


def test_blocking_callers_in_several_threads_share_the_prefix_bound(reranker):
    """Library calls from four threads, with room for one prefix at a time: every call
    finishes with its solo scores (a request waiting for room does not hold up the others'
    passes), and the bound held. Fault seen failing: room never
    given back (the later callers wait forever: here the join timeout)."""
    specs = [(long_query(25 + 10 * i), docs_for(70 + i, 5)) for i in range(4)]
    want = [reranker.score(q, d) for q, d in specs]
    contexts = [len(reranker.prepare(reranker.request(q, d)).encoded.context) for q, d in specs]
    settings = Settings(device="cpu", prefix_reuse="on", max_prefix_tokens=max(contexts))
    bounded = reranker.with_settings(settings)
    got: dict[int, list[float]] = {}

    def call(i: int) -> None:
        got[i] = bounded.score(*specs[i], batch_size=2)

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a blocking caller never finished"
    assert bounded.scheduler.prefix_peak[0] <= max(contexts)
    assert bounded.scheduler.prefix_held(0) == 0
    for i, w in enumerate(want):
        assert max(abs(a - b) for a, b in zip(got[i], w, strict=True)) <= 1e-5


def test_a_request_finished_on_two_replicas_at_once_is_finished_once(reranker, monkeypatch):
    """Two replicas finish passes of the same requests at the same moment; the finiteness
    check, between counting a pass's documents and deciding whether the request is done, is
    stretched so that the other replica always lands in that window. Fault seen failing: the
    count and the decision outside the scheduler's lock (both replicas see 0 left and post
    "done" twice; a caller of several requests then returns with None logits)."""
    engines = [
        Engine(reranker.engine.scorer, max_batch_tokens=100_000, prefix_reuse="off")
        for _ in range(2)
    ]
    scheduler = Scheduler(engines)
    a, b = (reranker.prepare(reranker.request("q", docs_for(80 + n, n))) for n in (4, 30))
    try:
        asyncio.run(scheduler.logits(a.encoded, batch_size=2))  # starts the two workers
        slow = SimpleNamespace(isfinite=lambda x: time.sleep(0.02) or math.isfinite(x))
        monkeypatch.setattr(queued_module, "math", slow)  # slows finishing, under the lock
        results = []
        caller = threading.Thread(
            target=lambda: results.extend(
                asyncio.run(scheduler.logits_many([a.encoded, b.encoded], batch_size=2))
            ),
            daemon=True,
        )
        caller.start()
        caller.join(timeout=120)
        assert not caller.is_alive()
    finally:
        scheduler.close()
    for prepared, (logits, stats) in zip((a, b), results, strict=True):
        assert None not in logits and stats.documents == len(logits)
        want, _ = solo_logits(reranker, prepared)
        assert max(abs(x - y) for x, y in zip(logits, want, strict=True)) <= 1e-5


def test_a_failed_request_leaves_no_cached_prefix_behind(broken_model):
    """A request fails inside a pass (a prompt that never fits): its room is given back, and
    so is the memory of its cached prefix, at once, not at the next garbage collection.
    Fault seen failing: the error posted with its traceback's frames intact (they hold the
    pass's items, and the caller's re-raise makes a cycle that only gc breaks)."""
    refs = []

    class Recording(MemoryLimit):
        def contexts(self, batch):
            out = self._scorer.contexts(batch)
            refs.extend(weakref.ref(c.k) for c in out)
            return out

    engine = Engine(
        Recording(broken_model.engine.scorer, limit=300),
        max_batch_tokens=100_000,
        prefix_reuse="on",
    )
    scheduler = Scheduler([engine])
    prepared = broken_model.prepare(broken_model.request("q", ["a calm lake", "lava " * 400]))

    async def main():
        with pytest.raises(DocumentTooLargeError):
            await scheduler.logits(prepared.encoded, batch_size=8)

    gc.disable()
    try:
        asyncio.run(main())
        assert refs and scheduler.prefix_held(0) == 0
        assert [r() for r in refs] == [None] * len(refs)
    finally:
        gc.enable()
        scheduler.close()


# -- thread lifecycle: passes run only on the workers, which never outlive their use -------


def replica_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("reranker-replica-")]


def test_close_leaves_no_worker_thread_behind(reranker):
    """The library's blocking calls start the workers (passes never run in the caller's
    thread); close() stops and joins them. Faults seen failing: close() that does not join
    (a worker still alive after it); passes run by the caller again (no worker started)."""
    bounded = reranker.with_settings(Settings(device="cpu"))
    before = set(replica_threads())
    caller = threading.current_thread()
    ran_on: set[str] = set()

    class Observed(MemoryLimit):
        def logits(self, batch, contexts=()):
            ran_on.add(threading.current_thread().name)
            return self._scorer.logits(batch, contexts)

    bounded.engines[0].scorer = Observed(bounded.engines[0].scorer, limit=1 << 30)
    bounded.score("q", docs_for(5, 3))
    assert ran_on == {"reranker-replica-0"} and caller.name not in ran_on
    started = set(bounded.scheduler.workers)
    assert started and started.isdisjoint(before)
    bounded.close()
    assert not any(t.is_alive() for t in started)
    assert bounded.scheduler.workers == []


@pytest.mark.subprocess
def test_a_script_that_never_calls_close_exits_promptly(model_dir, tmp_path):
    """Load, rank, exit, without close(): the interpreter exits (the workers and the loop
    thread are daemons, stopped at exit), with the ranking printed. Bounded by the
    subprocess timeout, not timed. Fault seen failing: non-daemon workers (the process
    never exits: TimeoutExpired)."""
    import subprocess
    import sys

    script = tmp_path / "rank.py"
    script.write_text(
        "from reranker import Reranker\n"
        f"r = Reranker.load({str(model_dir)!r}, device='cpu')\n"
        "print(r.rank('q', ['a', 'b'], top_k=1).results[0].index)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() in {"0", "1"}
