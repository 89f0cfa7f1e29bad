"""Admission control: the FIFO weighted gate, the two in-flight bounds, and the service
waiting its turn under them. Every wait is bounded by ``GUARD`` seconds (a hang fails)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import pytest

from reranker import Settings
from reranker.config import Limits
from reranker.request import prepare as request_module
from reranker.request.prepare import RerankRequest, prepare
from reranker.runtime.admission import Admission, AdmissionTimeout, FifoGate
from reranker.service import RerankService
from reranker.text.tokenization import PromptEncoder

GUARD = 20.0


async def settle() -> None:
    """Let every callback and task that is ready run."""
    for _ in range(5):
        await asyncio.sleep(0)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, GUARD))


# -- the gate ------------------------------------------------------------------------------


def test_grants_in_arrival_order_and_a_later_small_one_never_overtakes():
    """Faults seen failing: waiters popped from the right (LIFO); a waiter that fits granted
    past a head that does not."""

    async def main():
        gate = FifoGate(10)
        granted: list[str] = []
        await gate.acquire(10)

        async def take(name, weight):
            await gate.acquire(weight)
            granted.append(name)

        tasks = []
        for name, weight in [("a", 3), ("b", 8), ("c", 2), ("d", 1)]:
            tasks.append(asyncio.create_task(take(name, weight)))
            await settle()
        assert granted == [] and gate.waiting == 4
        gate.release(10)
        await settle()
        # a fits; b (8) does not fit beside a (3), so c and d wait behind b though they fit
        assert granted == ["a"] and gate.in_use == 3
        gate.release(3)
        await settle()
        assert granted == ["a", "b", "c"] and gate.in_use == 10
        gate.release(8)
        await settle()
        assert granted == ["a", "b", "c", "d"]
        gate.release(2)
        gate.release(1)
        await asyncio.gather(*tasks)
        assert gate.in_use == 0 and gate.waiting == 0

    run(main())


def test_a_request_larger_than_the_capacity_runs_alone():
    """Fault seen failing: `_fits` without its `in_use == 0` clause (the big one waits
    forever: the guard's timeout)."""

    async def main():
        gate = FifoGate(10)
        await gate.acquire(2)
        big = asyncio.create_task(gate.acquire(25))
        await settle()
        assert not big.done()  # not while anything else is held
        small = asyncio.create_task(gate.acquire(1))
        await settle()
        assert not small.done()  # FIFO: behind the big one
        gate.release(2)
        await big
        assert gate.in_use == 25
        await settle()
        assert not small.done()  # alone means alone
        gate.release(25)
        await small
        assert gate.in_use == 1 and gate.peak == 25

    run(main())


def test_a_cancelled_waiter_leaves_holding_nothing_and_the_next_goes():
    """Faults seen failing: `_abandon` not removing the waiter (its units leak when it is
    granted later); `_abandon` not granting the next (b waits though it fits)."""

    async def main():
        gate = FifoGate(10)
        await gate.acquire(6)
        a = asyncio.create_task(gate.acquire(8))  # head: does not fit beside 6
        await settle()
        b = asyncio.create_task(gate.acquire(4))  # fits, but FIFO keeps it behind a
        await settle()
        assert not b.done()
        a.cancel()
        await b  # leaving the head lets b in at once, with no release
        with pytest.raises(asyncio.CancelledError):
            await a
        assert gate.in_use == 10 and gate.waiting == 0
        gate.release(6)
        gate.release(4)
        assert gate.in_use == 0

    run(main())


def test_a_waiter_cancelled_just_as_it_is_granted_hands_the_units_on():
    """Fault seen failing: `_abandon` ignoring `granted` (the granted units leak: c never
    runs)."""

    async def main():
        gate = FifoGate(10)
        await gate.acquire(10)
        a = asyncio.create_task(gate.acquire(10))
        await settle()
        c = asyncio.create_task(gate.acquire(10))
        await settle()
        gate.release(10)  # grants a; a's wake-up is only scheduled
        a.cancel()  # ... and a is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await a
        await c
        assert gate.in_use == 10 and gate.waiting == 0

    run(main())


def test_timeout_while_waiting_raises_and_holds_nothing():
    """Faults seen failing: the timeout not passed to the wait (the guard's timeout); a timed
    out waiter left in the queue."""

    async def main():
        gate = FifoGate(5)
        await gate.acquire(5)
        with pytest.raises(TimeoutError):
            await gate.acquire(1, timeout=0.05)
        assert gate.in_use == 5 and gate.waiting == 0
        gate.release(5)
        await gate.acquire(5, timeout=0.05)  # nothing waits: granted at once

    run(main())


def test_waiters_on_other_event_loops_and_threads_are_woken():
    """A holder on one loop releases; waiters on another loop and in a plain thread wake.
    Fault seen failing: the future resolved directly from the releasing thread instead of
    through `call_soon_threadsafe` (the other loop never wakes: the guard's timeout)."""
    gate = FifoGate(4)
    order: list[str] = []
    held = threading.Event()
    release = threading.Event()

    def holder():
        async def main():
            await gate.acquire(4)
            held.set()
            await asyncio.to_thread(release.wait, GUARD)
            gate.release(4)

        asyncio.run(main())

    def async_waiter():
        async def main():
            await gate.acquire(3, timeout=GUARD)
            order.append("loop")
            gate.release(3)

        asyncio.run(main())

    def thread_waiter():  # no event loop: a ticket, woken through its callback
        woken = threading.Event()
        ticket = gate.enter(2, wake=lambda: woken.set() or True)
        assert ticket.granted or woken.wait(GUARD)
        order.append("thread")
        gate.leave(ticket)

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    assert held.wait(GUARD)
    for target in (async_waiter, thread_waiter):
        t = threading.Thread(target=target)
        t.start()
        threads.append(t)
        for _ in range(int(GUARD * 100)):  # queued before the next one starts (FIFO)
            if gate.waiting == len(threads) - 1:
                break
            threading.Event().wait(0.01)
    assert gate.waiting == 2
    release.set()
    for t in threads:
        t.join(GUARD)
    assert order == ["loop", "thread"] and gate.in_use == 0


def test_releasing_more_than_is_held_is_a_bug_that_says_so():
    """Fault seen failing: the check removed (a double release would silently raise the
    bound)."""
    gate = FifoGate(3)
    with pytest.raises(RuntimeError, match="released 1 units but only 0 are held"):
        gate.release(1)


# -- the two bounds around tokenization ----------------------------------------------------


@pytest.fixture(scope="module")
def encoder(tokenizer):
    return PromptEncoder(tokenizer)


def request(documents, **fields) -> RerankRequest:
    return RerankRequest.build(Limits(), query="q", documents=documents, **fields)


def test_characters_are_held_while_tokenizing_and_tokens_until_done(encoder):
    """Faults seen failing: characters released before tokenizing (in_use 0 inside
    prepare); tokens not held (in_use 0 inside the block)."""
    admission = Admission(max_chars=1000, max_tokens=1000, timeout=GUARD)
    seen = {}

    def observed_prepare(req):
        seen["chars while tokenizing"] = admission.chars.in_use
        return prepare(req, encoder, Limits())

    async def main():
        req = request(["alpha beta", "gamma", "alpha beta"])
        async with admission.admit([req], observed_prepare) as (admitted,):
            assert admission.chars.in_use == 0  # released once the tokens are admitted
            assert admission.tokens.in_use == admitted.prepared.num_tokens > 0
        return req

    req = run(main())
    # distinct documents once, plus query and instruction
    assert seen["chars while tokenizing"] == len("alpha beta") + len("gamma") + 1 + len(
        req.instruction
    )
    assert admission.tokens.in_use == 0


def test_errors_release_what_the_request_held(encoder):
    """Faults seen failing: no `finally` around the yield (tokens leak on an error in the
    block); characters not released when tokenization fails."""
    admission = Admission(max_chars=1000, max_tokens=1000, timeout=GUARD)

    def failing_prepare(req):
        raise ValueError("documents make too many tokens")

    async def main():
        with pytest.raises(ValueError, match="too many"):
            async with admission.admit([request(["a"])], failing_prepare):
                pass
        assert admission.chars.in_use == 0 and admission.tokens.in_use == 0
        with pytest.raises(KeyError):
            async with admission.admit([request(["a"])], lambda r: prepare(r, encoder, Limits())):
                raise KeyError("scoring failed")
        assert admission.chars.in_use == 0 and admission.tokens.in_use == 0

    run(main())


def test_cancelled_while_tokenizing_keeps_its_characters_until_the_thread_ends(encoder):
    """The tokenizer's thread cannot be stopped; its memory stays counted until it ends.
    Fault seen failing: characters released at the cancel (in_use 0 while it still runs)."""
    admission = Admission(max_chars=1000, max_tokens=1000, timeout=GUARD)
    started, finish = threading.Event(), threading.Event()

    def slow_prepare(req):
        started.set()
        finish.wait(GUARD)
        return prepare(req, encoder, Limits())

    async def main():
        req = request(["some words"])
        task = asyncio.create_task(admission.admit([req], slow_prepare).__aenter__())
        await asyncio.to_thread(started.wait, GUARD)
        held = admission.chars.in_use
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert admission.chars.in_use == held > 0  # the thread still runs
        finish.set()
        for _ in range(int(GUARD * 100)):
            if admission.chars.in_use == 0:
                break
            await asyncio.sleep(0.01)
        assert admission.chars.in_use == 0 and admission.tokens.in_use == 0

    run(main())


def test_waiting_past_the_bound_fails_naming_the_settings(encoder):
    """Faults seen failing: the gate's TimeoutError passed on unconverted (no setting named);
    the wait not bounded (the guard's timeout)."""
    admission = Admission(max_chars=1000, max_tokens=5, timeout=0.1)

    def prep(req):
        return prepare(req, encoder, Limits())

    async def main():
        async with admission.admit([request(["first"])], prep) as (first,):
            with pytest.raises(AdmissionTimeout) as info:
                async with admission.admit([request(["second"])], prep):
                    pass
            assert admission.tokens.in_use == first.prepared.num_tokens
            assert admission.chars.in_use == 0
        return str(info.value)

    message = run(main())
    assert "RERANKER_ADMISSION_TIMEOUT" in message and "RERANKER_MAX_TOKENS_IN_FLIGHT" in message
    assert message.startswith("the reranker is busy") and "\n" not in message


# -- the service: requests beyond the bounds wait their turn -------------------------------


def test_service_requests_beyond_the_bounds_wait_and_all_match_solo_runs(model_dir, reranker):
    """Faults seen failing: the service tokenizing outside admission (peak 0, nobody waits);
    `_fits` always true (the peak passes the bound); tokens never released (the guard's
    timeout)."""
    words = ["tea", "river", "model", "rank", "green", "city", "token", "stone"]
    specs = [
        (f"query {i}", [" ".join(words[j % 8 : j % 8 + 3]) * (1 + i % 3) for j in range(i, i + 6)])
        for i in range(6)
    ]
    big = ("big query", [f"{w} {i} " * 20 for i, w in enumerate(words * 4)])

    def tokens(query, docs):
        return reranker.prepare(
            RerankRequest.build(Limits(), query=query, documents=docs)
        ).num_tokens

    sizes = [tokens(*spec) for spec in specs]
    big_tokens = tokens(*big)
    bound = 2 * max(sizes)  # about two requests at once
    assert big_tokens > bound  # over the whole bound: it must run alone
    settings = Settings(
        device="cpu", warmup=False, max_tokens_in_flight=bound, max_chars_in_flight=400
    )
    service = RerankService.start(replace(settings, model=str(model_dir)))
    admission = service.reranker.admission

    async def requests(batch):
        async def one(query, docs):
            req = RerankRequest.build(service.limits, query=query, documents=docs, top_k=0)
            return await service.rerank(req, say=lambda _: None)

        return await asyncio.gather(*(one(q, d) for q, d in batch))

    try:
        first = [*specs, *specs]
        outputs = run(requests(first))
        assert 0 < admission.tokens.peak <= bound  # never more than the bound at once
        assert sum(m.admission_wait_seconds > 0 for _, m in outputs) >= len(specs)
        admission.tokens.peak = 0
        second = [specs[0], big, *specs]
        outputs += run(requests(second))
        assert admission.tokens.peak == big_tokens  # the big one alone, nothing beside it
    finally:
        service.close()
    for (query, docs), (result, _) in zip(first + second, outputs, strict=True):
        want = reranker.rank(query, docs, top_k=0)
        assert [r.index for r in result.results] == [r.index for r in want.results]
        for a, b in zip(result.results, want.results, strict=True):
            assert abs(a.score - b.score) <= 1e-5 and a.document == b.document
    assert admission.tokens.in_use == 0 and admission.chars.in_use == 0


# -- tokenization a chunk at a time (bounds the tokenizer's memory per request) -------------


def test_tokenizing_in_chunks_gives_the_ids_of_one_call(encoder, monkeypatch):
    """Faults seen failing: `chunks` dropping its last range; a document's tokens counted
    once when it appears twice (the budget check then passes a request it must refuse)."""
    docs = [f"document {i} " + "word " * (i % 7) for i in range(40)]
    docs += [*docs[:5], "a" * 300]  # duplicates, and one longer than a chunk
    req = request(docs)
    whole = encoder.encode(
        req.instruction, req.query, list(dict.fromkeys(docs)), req.options.max_length
    )
    monkeypatch.setattr(request_module, "TOKENIZE_CHUNK_CHARS", 64)
    assert len(request_module.chunks([len(d) for d in dict.fromkeys(docs)], 64)) > 10
    prepared = prepare(req, encoder, Limits())
    assert prepared.encoded == whole
    exact = prepared.num_tokens
    prepare(req, encoder, Limits(max_request_tokens=exact))  # exactly at the limit: fine
    with pytest.raises(ValueError, match=f"documents make {exact:,} prompt tokens after trunc"):
        prepare(req, encoder, Limits(max_request_tokens=exact - 1))


def test_a_request_over_its_token_budget_stops_at_the_chunk_that_crosses_it(encoder, monkeypatch):
    """Fault seen failing: the budget checked only after the last chunk."""
    calls = []
    real = encoder.encode_tails

    def counted(documents, room):
        calls.append(len(documents))
        return real(documents, room)

    monkeypatch.setattr(encoder, "encode_tails", counted)
    monkeypatch.setattr(request_module, "TOKENIZE_CHUNK_CHARS", 100)
    req = request([f"document number {i} " * 5 for i in range(50)])
    with pytest.raises(ValueError, match=r"^documents make at least [\d,]+ prompt tokens"):
        prepare(req, encoder, Limits(max_request_tokens=200))
    assert 1 <= len(calls) <= 3  # of 50 chunks
