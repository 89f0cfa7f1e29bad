"""HTTP fuzz and soak against the real Cog server: bad requests interleaved with good ones
from several clients, bounded in count and time. Nothing may crash, hang or kill the worker."""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from devtools.hostile import GOOD, JSON, fuzz_cases, rejected_cases
from devtools.localserver import LocalCogServer

pytestmark = [pytest.mark.server, pytest.mark.fuzz]

CLIENTS = 4
TIME_LIMIT_S = 180


INT64_MAX = 2**63 - 1


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def input_verdict(inputs: dict) -> str:
    """What the input reference (README.md) and limits (docs/configuration.md) allow, written out
    independently of the code: "accept", "reject", or "either" (nulls for optional fields and
    unknown fields: accepted by a local server, 422 with a `cog build` schema; integers beyond
    int64)."""

    def text(value, limit, allow_empty=False):
        if not isinstance(value, str) or len(value) > limit:
            return "reject"
        return "accept" if allow_empty or value.strip() else "reject"

    def length(value):  # the system prompt alone is ~40 tokens; 200 holds any prompt here
        return "either" if _is_int(value) and 40 <= value < 200 else integer(value, 200, 32768)

    def integer(value, low, high=None):
        if not _is_int(value) or value < low or (high is not None and value > high):
            return "reject"
        return "either" if value > INT64_MAX else "accept"

    fields = {"query", "documents", "instruction", "top_k", "batch_size", "max_length"}
    fields.add("return_documents")
    verdicts = ["either" if set(inputs) - fields else "accept"]
    verdicts.append(text(inputs.get("query"), 100_000))
    docs = inputs.get("documents")
    ok_docs = (
        isinstance(docs, list)
        and 1 <= len(docs) <= 10_000
        and all(isinstance(d, str) and len(d) <= 1_000_000 for d in docs)
        and sum(map(len, docs)) <= 50_000_000
    )
    verdicts.append("accept" if ok_docs else "reject")
    for name, check in [
        ("instruction", lambda v: text(v, 100_000, allow_empty=True)),
        ("top_k", lambda v: integer(v, 0)),
        ("batch_size", lambda v: integer(v, 1)),
        # the system prompt alone is ~40 tokens; 200 holds any prompt of these inputs
        (
            "max_length",
            lambda v: "either" if _is_int(v) and 40 <= v < 200 else integer(v, 200, 32768),
        ),
        ("return_documents", lambda v: "accept" if isinstance(v, bool) else "reject"),
    ]:
        if name not in inputs:
            continue
        value = inputs[name]
        if value is None and name in ("instruction", "top_k"):
            verdicts.append("either")
        else:
            verdicts.append(check(value))
    if "reject" in verdicts:
        return "reject"
    return "either" if "either" in verdicts else "accept"


def bodies(rng: random.Random, limits) -> list[tuple[str, bytes, dict, str]]:
    """(label, raw body, headers, verdict) for every hostile request of devtools.hostile: the
    fuzz cases, then the soak's rejected cases (labelled with the field they name)."""
    cases = fuzz_cases(rng)
    cases += [replace(c, name=f"{c.name} [{c.field}]") for c in rejected_cases(limits)]
    out = []
    for c in cases:
        if c.raw is None:
            verdict = input_verdict(c.inputs)
        else:  # a lone surrogate escape is valid JSON that some parsers refuse: either is fine
            verdict = "either" if c.name == "lone surrogate escape" else "reject"
        out.append((c.name, c.body(), c.headers, verdict))
    assert len({label for label, *_ in out}) == len(out)
    return out


@pytest.fixture(scope="module")
def server(model_dir):
    with LocalCogServer({"RERANKER_MODEL": str(model_dir)}, concurrency=CLIENTS) as s:
        yield s


def test_fuzz_and_soak(server, reranker):
    rng = random.Random(0)
    hostile = bodies(rng, reranker.limits)
    verdicts = {label: verdict for label, _, _, verdict in hostile}
    assert verdicts["documents too many"] == "reject" and verdicts["control tokens"] == "accept"
    good = ("good", json.dumps({"input": GOOD}).encode(), JSON)
    schedule = [h[:3] for h in hostile] * 2 + [good] * 40
    rng.shuffle(schedule)
    pid = server.process.pid
    want = reranker.rank(GOOD["query"], GOOD["documents"], top_k=5).to_dict()["results"]
    deadline = time.monotonic() + TIME_LIMIT_S

    def send(item):
        label, body, headers = item
        if time.monotonic() > deadline:
            return label, "skipped", None
        for _ in range(200):  # a 409 (all slots busy) is retried, as a client would
            status, raw = server.request("POST", "/predictions", body, headers, timeout=120)
            if status != 409:
                break
            time.sleep(0.05)
        return label, status, raw

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(send, schedule))

    tried = clear = 0
    problems = []
    for label, status, raw in answers:
        if status == "skipped":
            continue
        tried += 1
        if label == "good":
            body = json.loads(raw)
            ok = body.get("status") == "succeeded" and [
                r["index"] for r in body["output"]["results"]
            ] == [r["index"] for r in want]
            clear += ok
            if not ok:
                problems.append((label, status, raw[:300]))
            continue
        outcome = None
        if status in (400, 413, 415, 422):
            outcome = "reject"
        elif status == 200:
            body = json.loads(raw)
            error = body.get("error") or ""
            if body.get("status") == "failed" and error and "Traceback" not in error:
                outcome = "reject"
            elif body.get("status") == "succeeded":
                outcome = "accept"
        if outcome is not None and verdicts[label] in (outcome, "either"):
            clear += 1
        else:  # a crash, or an answer the input reference does not allow
            problems.append((label, verdicts[label], status, raw[:300]))
    kinds: dict[str, int] = {}
    for _, status, raw in answers:
        kind = str(status)
        if status == 200:
            kind = "200 " + json.loads(raw).get("status", "?")
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"\nfuzz: {tried} requests tried, {clear} answered clearly; by answer: {kinds}")
    assert tried == len(schedule), "the soak ran out of time"
    assert not problems, problems[:5]
    assert clear == tried
    assert server.process.pid == pid and server.alive  # no restart, no crash
    assert server.health()["status"] == "READY"
    status, body = server.predict(GOOD)
    assert body["status"] == "succeeded"
    assert [r["index"] for r in body["output"]["results"]] == [r["index"] for r in want]
