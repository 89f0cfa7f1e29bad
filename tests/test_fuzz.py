"""HTTP fuzz and soak against the real Cog server: bad requests interleaved with good ones
from several clients, bounded in count and time. Nothing may crash, hang or kill the worker."""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from devtools.localserver import LocalCogServer

CLIENTS = 4
TIME_LIMIT_S = 180
GOOD = {"query": "capital of France?", "documents": ["Paris is the capital.", "Bananas.", ""]}
JSON = {"Content-Type": "application/json"}


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


def bodies(rng: random.Random) -> list[tuple[str, bytes, dict, str]]:
    """(label, raw body, headers, verdict) for every hostile request."""
    raw = [
        ("truncated json", b'{"input": {"query": "q", "documents": ["a"', JSON),
        ("not json", b"hello", JSON),
        ("invalid utf-8", b'{"input": {"query": "\xff\xfe", "documents": ["a"]}}', JSON),
        ("json null", b"null", JSON),
        ("json array", b"[1, 2, 3]", JSON),
        ("input null", b'{"input": null}', JSON),
        ("input string", b'{"input": "query"}', JSON),
        ("empty object", b"{}", JSON),
        ("no content type", json.dumps({"input": GOOD}).encode(), {}),
        ("text/plain", json.dumps({"input": GOOD}).encode(), {"Content-Type": "text/plain"}),
        (
            "deep nesting",
            b'{"input": {"query": "q", "documents": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
            JSON,
        ),
        (
            "lone surrogate escape",
            b'{"input": {"query": "\\ud800", "documents": ["\\udfff"]}}',
            JSON,
        ),
    ]
    inputs = [
        ("query int", {"query": 1, "documents": ["a"]}),
        ("query list", {"query": ["q"], "documents": ["a"]}),
        ("query object", {"query": {"a": {"b": [1]}}, "documents": ["a"]}),
        ("query null", {"query": None, "documents": ["a"]}),
        ("query huge", {"query": "q" * 200_000, "documents": ["a"]}),
        ("documents string", {"query": "q", "documents": "a, b"}),
        ("documents null", {"query": "q", "documents": None}),
        ("documents object", {"query": "q", "documents": {"0": "a"}}),
        ("documents nested", {"query": "q", "documents": [["a", ["b"]]]}),
        ("documents mixed", {"query": "q", "documents": ["a", 1, None, True, {}, 2.5]}),
        ("documents empty", {"query": "q", "documents": []}),
        ("documents too many", {"query": "q", "documents": ["x"] * 10_001}),
        ("document too long", {"query": "q", "documents": ["x" * 1_000_001]}),
        ("large body", {"query": "q", "documents": ["y" * 900_000] * 12}),
        ("top_k negative", {**GOOD, "top_k": -1}),
        ("top_k string", {**GOOD, "top_k": "3"}),
        ("top_k float", {**GOOD, "top_k": 2.5}),
        ("top_k huge", {**GOOD, "top_k": 2**70}),
        ("top_k null", {**GOOD, "top_k": None}),
        ("batch_size zero", {**GOOD, "batch_size": 0}),
        ("batch_size huge", {**GOOD, "batch_size": 10**12}),
        ("max_length too big", {**GOOD, "max_length": 10**9}),
        ("max_length tiny", {**GOOD, "max_length": 5}),
        ("max_length string", {**GOOD, "max_length": "8192"}),
        ("return_documents string", {**GOOD, "return_documents": "false"}),
        ("instruction object", {**GOOD, "instruction": {"x": 1}}),
        ("instruction null", {**GOOD, "instruction": None}),
        ("unknown field", {**GOOD, "temperature": 0.7}),
        (
            "control tokens",
            {"query": "<|im_end|>", "documents": ["<think>yes</think>", "\x00\x07"]},
        ),
    ]
    for i in range(30):  # random junk values in random fields
        field = rng.choice(
            ["query", "documents", "top_k", "batch_size", "max_length", "instruction"]
        )
        value = rng.choice([None, 0, -1, 1.5, "", "x", [], {}, [None], True, "\u0000" * 50, 2**40])
        inputs.append((f"random {i}", {**GOOD, field: value}))
    # a lone surrogate escape is valid JSON that some parsers refuse: either answer is fine
    out = [(*r, "either" if r[0] == "lone surrogate escape" else "reject") for r in raw]
    out += [
        (label, json.dumps({"input": value}).encode(), JSON, input_verdict(value))
        for label, value in inputs
    ]
    return out


@pytest.fixture(scope="module")
def server(model_dir):
    with LocalCogServer({"RERANKER_MODEL": str(model_dir)}, concurrency=CLIENTS) as s:
        yield s


def test_fuzz_and_soak(server, reranker):
    rng = random.Random(0)
    hostile = bodies(rng)
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
