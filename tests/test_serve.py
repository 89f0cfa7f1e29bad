"""`rerank serve` end to end on 127.0.0.1: the wire formats, errors, API key, bounds, metrics.

One server per module (tiny model, an API key set); answers are compared with the library's
``score``/``rank`` on the same model (same token ids, same float32 logits).

Faults seen failing (2026-12-07): results in input order instead of sorted, and
``"document": null`` instead of the field left out (test_each_route...); the API key check
always passing (test_every_route_but_health_needs_the_key); the streamed-body bound off, and
the Content-Length bound off (test_large_bodies...: 200, then 408 instead of 413); top_k not
renamed to top_n in messages (test_bad_input_names_the_field_as_cog_does); max_tokens_per_doc
ignored (test_max_tokens_per_doc...).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from devtools.apiserver import LocalRerankServer
from reranker.serve import schemas

pytestmark = pytest.mark.server

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUERY = "Which city is the capital of France?"
DOCS = ["Paris is the capital of France.", "Bananas are yellow.", "Lyon is in France.", ""]


@pytest.fixture(scope="module")
def server(model_dir):
    flags = ("--body-timeout", "3", "--header-timeout", "2")
    with LocalRerankServer(model_dir, *flags, env={"RERANKER_API_KEY": KEY}) as s:
        yield s


def post(server, path, body, headers=AUTH, **kw):
    return server.post(path, body, headers=headers, **kw)


def want_ranked(reranker, query, docs, **fields):
    return reranker.rank(query, docs, **fields).to_dict()["results"]


# -- the three routes and their shapes ------------------------------------------------------


@pytest.mark.parametrize(
    "path,documents", [("/v2/rerank", False), ("/v1/rerank", True), ("/rerank", True)]
)
def test_each_route_answers_like_the_library(server, reranker, path, documents):
    status, body = post(server, path, {"query": QUERY, "documents": DOCS, "model": "any-name"})
    assert status == 200, body
    want = want_ranked(reranker, QUERY, DOCS)
    scores = reranker.score(QUERY, DOCS)
    got = body["results"]
    assert [r["index"] for r in got] == [r["index"] for r in want]  # sorted, all of them
    for item, exp in zip(got, want, strict=True):
        assert item["relevance_score"] == scores[item["index"]] == exp["score"]
        assert 0.0 <= item["relevance_score"] <= 1.0
        assert (item["logit"], item["tokens"], item["truncated"]) == (
            exp["logit"],
            exp["tokens"],
            exp["truncated"],
        )
        # the field is left out, never null, when documents are not asked for
        assert ("document" in item) is documents
        if documents:
            assert item["document"] == {"text": DOCS[item["index"]]}
        assert "windows" not in item and "best_span" not in item
    tokens = sum(r["tokens"] for r in want)
    assert body["usage"] == {
        "prompt_tokens": tokens,
        "total_tokens": tokens,
        "truncated_documents": 0,
    }
    assert body["meta"]["tokens"] == {"input_tokens": tokens, "output_tokens": 0}
    assert body["meta"]["billed_units"] == {"search_units": 1}
    assert body["meta"]["api_version"]["version"] == ("2" if path == "/v2/rerank" else "1")
    assert body["model"] == "any-name" and len(body["id"]) == 36


@pytest.mark.parametrize(
    "top_n,expected", [(None, 4), (0, 4), (1, 1), (3, 3), (100, 4), ("absent", 4)]
)
def test_top_n(server, reranker, top_n, expected):
    request = {"query": QUERY, "documents": DOCS}
    if top_n != "absent":
        request["top_n"] = top_n
    status, body = post(server, "/v1/rerank", request)
    assert status == 200, body
    want = [r["index"] for r in want_ranked(reranker, QUERY, DOCS)]
    assert [r["index"] for r in body["results"]] == want[:expected]


def test_return_documents_and_text_objects(server, reranker):
    objects = [{"text": d, "title": "ignored"} for d in DOCS]
    status, strings = post(
        server, "/v2/rerank", {"query": QUERY, "documents": DOCS, "return_documents": True}
    )
    assert status == 200 and all(
        r["document"]["text"] == DOCS[r["index"]] for r in strings["results"]
    )
    status, body = post(
        server,
        "/v1/rerank",
        {"query": {"text": QUERY}, "documents": objects, "return_documents": False},
    )
    assert status == 200, body
    assert all("document" not in r for r in body["results"])
    pick = ("index", "relevance_score", "logit", "tokens")
    assert [{k: r[k] for k in pick} for r in body["results"]] == [
        {k: r[k] for k in pick} for r in strings["results"]
    ]


def test_instruction_and_unknown_fields(server, reranker):
    instruction = "Find the city"
    request = {
        "query": QUERY,
        "documents": DOCS,
        "instruction": instruction,
        "priority": 3,
        "rank_fields": ["text"],
        "max_chunks_per_doc": 10,
        "score_threshold": 0.8,
        "relevant_spans": {"mode": "enabled"},
    }
    status, body = post(server, "/rerank", request)
    assert status == 200, body
    scores = reranker.score(QUERY, DOCS, instruction=instruction)
    assert {r["index"]: r["relevance_score"] for r in body["results"]} == dict(enumerate(scores))
    assert scores != reranker.score(QUERY, DOCS)


def test_long_documents_chunk(server, reranker):
    docs = ["Paris is the capital of France. " * 60, "Lyon is in France."]
    fields = {"long_documents": "chunk", "chunk_overlap": 16}
    status, body = post(
        server,
        "/v1/rerank",
        {"query": QUERY, "documents": docs, "max_tokens_per_doc": 60, **fields},
    )
    assert status == 200, body
    # max_tokens_per_doc is the document's room in each window: the library at the same window
    want = reranker.rank(QUERY, docs, max_length=_max_length(reranker, QUERY, 60), **fields)
    want = want.to_dict()
    got = [
        (r["index"], r["windows"], r["best_span"], r["tokens"], r["logit"]) for r in body["results"]
    ]
    assert got == [
        (r["index"], r["windows"], r["best_span"], r["tokens"], r["logit"]) for r in want["results"]
    ]
    assert body["usage"]["windows"] == want["usage"]["windows"] > 2


def _max_length(reranker, query, cap):
    """The prompt length that leaves ``cap`` document tokens (independent of the server)."""
    from reranker.text.prompt import DEFAULT_INSTRUCTION

    encoder = reranker.encoder
    return encoder.fixed_tokens + len(encoder.head_ids(DEFAULT_INSTRUCTION, query)) + cap


def test_max_tokens_per_doc_truncates_and_never_errors(server, reranker):
    long = "Paris is the capital of France and its largest city. " * 40
    docs = [long, "Lyon."]
    tokens = {}
    for cap in (1, 7, 8, 50):
        status, body = post(
            server, "/v2/rerank", {"query": QUERY, "documents": docs, "max_tokens_per_doc": cap}
        )
        assert status == 200, body
        item = next(r for r in body["results"] if r["index"] == 0)
        assert item["truncated"] is True
        tokens[cap] = item["tokens"]
        # the same truncation the library makes at that prompt length
        want = reranker.rank(QUERY, docs, max_length=_max_length(reranker, QUERY, cap))
        assert [(r.index, r.logit, r.tokens) for r in want.results] == [
            (r["index"], r["logit"], r["tokens"]) for r in body["results"]
        ]
    assert tokens[8] - tokens[7] == 1 and tokens[50] - tokens[1] == 49
    # more than the model's window is capped, not refused; a short document is never cut
    status, body = post(
        server, "/v2/rerank", {"query": QUERY, "documents": docs, "max_tokens_per_doc": 10**12}
    )
    assert status == 200 and not any(r["truncated"] for r in body["results"]), body
    status, body = post(
        server, "/v2/rerank", {"query": QUERY, "documents": docs, "max_tokens_per_doc": 0}
    )
    assert status == 400 and body["message"] == "max_tokens_per_doc must be at least 1, got 0"


# -- text-embeddings-inference's shape ---------------------------------------------------------


def test_tei_shape(server, reranker):
    status, body = post(server, "/rerank", {"query": QUERY, "texts": DOCS})
    assert status == 200, body
    scores = reranker.score(QUERY, DOCS)
    order = [r["index"] for r in want_ranked(reranker, QUERY, DOCS)]
    assert body == [{"index": i, "score": scores[i]} for i in order]
    status, body = post(
        server,
        "/rerank",
        {
            "query": QUERY,
            "texts": DOCS,
            "raw_scores": True,
            "return_text": True,
            "truncate": True,
            "truncation_direction": "Right",
        },
    )
    assert status == 200, body
    logits = {r["index"]: r["logit"] for r in want_ranked(reranker, QUERY, DOCS)}
    assert body == [{"index": i, "score": logits[i], "text": DOCS[i]} for i in order]
    status, body = post(
        server, "/rerank", {"query": QUERY, "texts": DOCS, "truncation_direction": "Left"}
    )
    assert status == 400 and body["error"].startswith("truncation_direction must be Right")
    assert body["error_type"] == "validation"
    # truncate false: a text longer than the window is a 413, as TEI answers (fault seen
    # failing: truncate read and ignored, a 200 with the text cut)
    long = ["short", "word " * 9000]
    status, body = post(server, "/rerank", {"query": QUERY, "texts": long, "truncate": False})
    assert status == 413 and body["error_type"] == "validation", body
    assert body["error"].startswith("texts[1] is longer than the model's window (8,192 tokens")
    for flags in ({}, {"truncate": True}):
        status, body = post(server, "/rerank", {"query": QUERY, "texts": long, **flags})
        assert status == 200 and len(body) == 2, body
    status, body = post(server, "/rerank", {"query": QUERY, "texts": ["a", 5]})
    assert (status, body) == (
        400,
        {"error": "texts[1] must be a string, got int", "error_type": "validation"},
    )
    # texts elsewhere is not TEI: /v1/rerank wants documents
    status, body = post(server, "/v1/rerank", {"query": QUERY, "texts": DOCS})
    assert status == 400 and body["message"] == "documents is required"


# -- bad input: the Cog path's messages, 400, never a 500 ------------------------------------


def cog_cases():
    """tests/test_server.py's BAD inputs, as this API spells them (top_k is top_n here)."""
    from test_server import BAD

    for inputs, message in BAD:
        body = {("top_n" if k == "top_k" else k): v for k, v in inputs.items()}
        yield body, message.replace("top_k", "top_n")


@pytest.mark.parametrize("body,message", list(cog_cases()))
def test_bad_input_names_the_field_as_cog_does(server, body, message):
    for path in ("/v2/rerank", "/v1/rerank", "/rerank"):
        status, answer = post(server, path, body)
        assert status == 400, (path, answer)
        assert message in answer["message"], answer
        assert answer["error"]["message"] == answer["detail"] == answer["message"]
        assert (
            answer["error"]["param"] == answer["message"].split(" ")[0].split("[")[0].split("=")[0]
        )


@pytest.mark.parametrize(
    "raw,message",
    [
        (b"", "the request body is empty"),
        (b"{not json", "the request body is not valid JSON"),
        (b"\xff\xfe{}", "the request body is not valid JSON"),
        (b"[1, 2]", "the request body must be a JSON object, got an array"),
        (b'"text"', "the request body must be a JSON object, got a string"),
        (b"[" * 100_000 + b"]" * 100_000, "the request body is not valid JSON"),
        (
            json.dumps({"query": "q", "documents": ["a"], "model": 7}).encode(),
            "model must be a string, got int",
        ),
        (
            json.dumps({"query": "q", "documents": [{"title": "x"}]}).encode(),
            "documents[0] must be a string or an object with a text field",
        ),
        (
            json.dumps({"query": "q", "documents": [{"text": 3}]}).encode(),
            "documents[0].text must be a string, got int",
        ),
        (
            json.dumps(
                {
                    "query": "q",
                    "documents": [
                        "a",
                        {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
                    ],
                }
            ).encode(),
            "documents[1] is an image",
        ),
        (
            json.dumps({"query": {"image": "http://x/y.png"}, "documents": ["a"]}).encode(),
            "query is an image",
        ),
        (
            b'{"query": "q", "documents": ["a"], "top_n": NaN}',
            "top_n must be an integer, got float",
        ),
        (
            b'{"query": "q", "documents": ["a"], "top_n": 2.0}',
            "top_n must be an integer, got float",
        ),
        (
            b'{"query": "q", "documents": ["a"], "return_documents": 1}',
            "return_documents must be true or false, got int",
        ),
    ],
)
def test_malformed_bodies_are_400s(server, raw, message):
    status, answer = server.post("/v1/rerank", raw, headers=AUTH)
    assert status == 400, answer
    assert answer["message"].startswith(message), answer
    assert "Traceback" not in json.dumps(answer)


FIELDS = [
    "query",
    "documents",
    "top_n",
    "return_documents",
    "max_tokens_per_doc",
    "instruction",
    "model",
    "long_documents",
    "chunk_overlap",
]
TEI_FIELDS = ["query", "texts", "raw_scores", "return_text", "truncate", "truncation_direction"]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(field=st.sampled_from(FIELDS + ["tei:" + f for f in TEI_FIELDS]), value=json_values)
@example(field="tei:texts", value=[{}])  # found by CI: named documents[0], not texts[0]
def test_wrong_types_at_every_field(server, field, value):
    """Any JSON value at any field: 200 or a 400 that names the field; never a 5xx."""
    tei = field.startswith("tei:")
    name = field.removeprefix("tei:")
    body = {"query": "q", "texts" if tei else "documents": ["a", "b"], name: value}
    status, answer = post(server, "/rerank", body)
    assert status in (200, 400), (status, answer)
    if status == 400:
        message = answer["error"] if tei else answer["message"]
        assert message.split(" ")[0].split("[")[0].split(".")[0] == name, (name, value, message)


# -- the API key --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": KEY},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": f"Bearer {KEY}x"},
    ],
)
def test_every_route_but_health_needs_the_key(server, headers):
    for method, path in [
        ("POST", "/v1/rerank"),
        ("POST", "/v2/rerank"),
        ("POST", "/rerank"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
    ]:
        status, raw = server.request(
            method, path, json.dumps({"query": QUERY, "documents": DOCS}).encode(), headers
        )
        assert status == 401, (path, raw)
        assert json.loads(raw)["message"].startswith("a valid API key is required")
    assert server.request("GET", "/health", headers=headers)[0] == 200


def test_the_key_is_checked_in_any_scheme_case(server):
    for scheme in ("Bearer", "bearer", "BEARER"):
        status, _ = post(
            server,
            "/v1/rerank",
            {"query": QUERY, "documents": DOCS},
            {"Authorization": f"{scheme} {KEY}"},
        )
        assert status == 200


# -- bounds: body size, slow clients ---------------------------------------------------------


def upload(server, headers: dict[str, str], pieces) -> tuple[int, dict]:
    """Send a request piece by piece on a raw socket, as far as the server lets it, then read
    the answer (a server may answer and close before the body is all sent)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        head = ["POST /v1/rerank HTTP/1.1", "Host: x", *(f"{k}: {v}" for k, v in headers.items())]
        try:
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
            for piece in pieces:
                sock.sendall(piece)
        except OSError:
            pass  # answered and closed mid-upload
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read())


def test_large_bodies_are_refused_and_the_server_stays_up(server):
    big = json.dumps({"query": QUERY, "documents": ["x" * 1000] * 10_000}).encode()  # 10 MB
    assert len(big) > 10_000_000
    pieces = [big[i : i + (1 << 20)] for i in range(0, len(big), 1 << 20)]
    headers = {**AUTH, "Content-Type": "application/json"}
    status, answer = upload(server, {**headers, "Content-Length": str(len(big))}, pieces)
    assert status == 413 and "larger than 8,388,608 bytes" in answer["message"], answer
    # refused on its Content-Length alone, before any of it is read (not a 408 for waiting)
    status, answer = upload(server, {**headers, "Content-Length": str(len(big))}, [])
    assert status == 413, answer
    # chunked, with no Content-Length: refused once the bytes so far pass the bound
    chunked = [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]
    status, answer = upload(server, {**headers, "Transfer-Encoding": "chunked"}, chunked)
    assert status == 413 and answer["error"]["code"] == 413, answer
    assert post(server, "/v1/rerank", {"query": QUERY, "documents": DOCS})[0] == 200


def test_a_stalled_body_times_out_while_others_are_served(server):
    stalled = socket.create_connection(("127.0.0.1", server.port))
    idle = socket.create_connection(("127.0.0.1", server.port))  # connects, sends nothing
    try:
        head = "\r\n".join(
            [
                "POST /v1/rerank HTTP/1.1",
                "Host: x",
                f"Authorization: Bearer {KEY}",
                "Content-Type: application/json",
                "Content-Length: 1000",
                "",
                "",
            ]
        )
        stalled.sendall(head.encode() + b'{"query": "q", "docu')
        started = time.monotonic()
        assert post(server, "/v1/rerank", {"query": QUERY, "documents": DOCS})[0] == 200
        stalled.settimeout(30)
        answer = stalled.recv(65536).decode()
        assert answer.startswith("HTTP/1.1 408"), answer
        assert 2.5 < time.monotonic() - started < 20
    finally:
        stalled.close()
        idle.close()
    assert server.request("GET", "/health")[0] == 200


def test_slow_headers_and_idle_connections_are_closed_while_others_are_served(server):
    """A client trickling its headers (slowloris) or connecting and sending nothing loses its
    connection after --header-timeout (2 s here); so does a kept-alive connection that starts
    its next request after an answer and then stalls. Faults seen failing: the stock uvicorn
    protocol (all three held until the test's 12 s bound), the deadline not re-armed after a
    response (the kept-alive one held)."""
    socks = {name: socket.create_connection(("127.0.0.1", server.port)) for name in NAMES}
    try:
        started = time.monotonic()
        socks["trickler"].sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\n")
        body = json.dumps({"query": QUERY, "documents": DOCS}).encode()
        socks["kept"].sendall(
            b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (KEY.encode(), len(body), body)
        )
        for sock in socks.values():
            sock.setblocking(False)
        answer, closed_at = b"", {}
        while len(closed_at) < len(NAMES) and time.monotonic() - started < 12:
            with contextlib.suppress(OSError):  # one header line each 0.2 s
                socks["trickler"].send(b"X-Slow-%d: y\r\n" % int(time.monotonic() * 1000))
            for name, sock in socks.items():
                try:
                    data = b"" if name in closed_at else sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    closed_at.setdefault(name, time.monotonic() - started)
                    continue
                assert name == "kept", (name, data)
                answer += data
                if answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"}"):
                    sock.send(b"POST /v1/rerank HTTP/1.1\r\n")  # the next request stalls
                    answer = b"sent"
        assert set(closed_at) == set(NAMES), closed_at
        assert answer == b"sent"
        assert all(1.5 < t < 8 for t in closed_at.values()), closed_at
        assert post(server, "/v1/rerank", {"query": QUERY, "documents": DOCS})[0] == 200
    finally:
        for sock in socks.values():
            sock.close()
    assert server.request("GET", "/health")[0] == 200


NAMES = ("trickler", "idle", "kept")


# -- health, metrics, OpenAPI ------------------------------------------------------------------


def test_metrics_count_requests_documents_and_passes(server):
    def value(name):
        return server.metric(name, headers=AUTH)

    before = {
        n: value(n)
        for n in (
            "reranker_documents_total",
            "reranker_forward_pass_seconds_count",
            'reranker_requests_total{route="/v1/rerank",status="200"}',
            'reranker_request_errors_total{kind="invalid_request"}',
            "reranker_request_duration_seconds_count",
        )
    }
    assert post(server, "/v1/rerank", {"query": QUERY, "documents": DOCS})[0] == 200
    assert post(server, "/v1/rerank", {"query": "", "documents": DOCS})[0] == 400
    after = {n: value(n) for n in before}
    assert after["reranker_documents_total"] - before["reranker_documents_total"] == 4
    assert (
        after["reranker_forward_pass_seconds_count"] - before["reranker_forward_pass_seconds_count"]
        >= 1
    )
    assert (
        after['reranker_requests_total{route="/v1/rerank",status="200"}']
        - before['reranker_requests_total{route="/v1/rerank",status="200"}']
        == 1
    )
    assert (
        after['reranker_request_errors_total{kind="invalid_request"}']
        - before['reranker_request_errors_total{kind="invalid_request"}']
        == 1
    )
    assert (
        after["reranker_request_duration_seconds_count"]
        - before["reranker_request_duration_seconds_count"]
        == 1
    )
    _, text = server.request("GET", "/metrics", headers=AUTH)
    for name in (
        "reranker_queued_documents",
        "reranker_requests_in_flight",
        "reranker_requests_waiting_admission",
        "reranker_forward_pass_documents_bucket",
        "reranker_prompt_tokens_total",
    ):
        assert name in text.decode()


def test_openapi_describes_what_the_handler_reads(server):
    status, raw = server.request("GET", "/openapi.json", headers=AUTH)
    assert status == 200
    spec = json.loads(raw)
    for path in ("/v2/rerank", "/v1/rerank", "/rerank"):
        assert "post" in spec["paths"][path]
    props = spec["components"]["schemas"]["RerankBody"]["properties"]
    read = {"query", "documents", "model", "max_tokens_per_doc", *schemas.OPTIONS}
    assert set(props) == read
    assert set(spec["components"]["schemas"]["TEIBody"]["properties"]) == {
        "query",
        "texts",
        "truncation_direction",
        *schemas.TEI_FLAGS,
    }
    assert server.request("GET", "/docs", headers=AUTH)[0] == 200


def test_health_is_ready(server):
    status, raw = server.request("GET", "/health")
    assert (status, json.loads(raw)) == (200, {"status": "ready"})


def hostile_requests():
    from devtools.hostile import documents, long_runs, text

    return st.fixed_dictionaries(
        {
            "query": st.one_of(text, long_runs),
            "documents": documents,
            "instruction": st.one_of(st.none(), text),
            "top_n": st.one_of(st.none(), st.integers(-2, 12)),
        }
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=hostile_requests())
def test_the_hostile_corpus_of_the_cog_tests(server, reranker, request):
    """The text that breaks naive pipelines (control-token spellings, lone surrogates, NUL,
    RTL marks, long runs) through JSON and the server: a 400 naming the field, or exactly the
    library's scores (so no user text became a control token on the way)."""
    status, body = post(server, "/v1/rerank", request)
    if status == 400:
        field = body["message"].split(" ")[0].split("[")[0].split("=")[0]
        assert field in ("query", "documents", "instruction", "top_n", "max_length"), body
        return
    assert status == 200, body
    scores = reranker.score(
        request["query"], request["documents"], instruction=request["instruction"]
    )
    got = {r["index"]: r["relevance_score"] for r in body["results"]}
    assert all(got[i] == scores[i] for i in got)
    assert len(got) == min(request["top_n"] or len(scores), len(scores))
