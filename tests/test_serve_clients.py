"""Real clients, unmodified from PyPI, against `rerank serve` on 127.0.0.1.

cohere 7 (ClientV2 -> /v2/rerank, Client -> /v1/rerank), LiteLLM's ``rerank()`` (``cohere/``
-> /v2/rerank, ``hosted_vllm/`` -> /rerank), LlamaIndex's JinaAI postprocessor (Jina's shape,
``base_url + "/rerank"``) and TEI postprocessor (TEI's shape) run in this process, from the dev
group. LangChain's CohereRerank needs cohere<6, so it runs in its own environment
(tests/envs/langchain, its own uv.lock) as a subprocess. Then the exact bodies Open WebUI and
Dify's plugins send, replayed from their source.

Every score must equal the library's ``score()`` for the same inputs: same token ids, same
float32 logits on the tiny model. Nothing may leave 127.0.0.1: a guard refuses any other
address and the module fails if anything tried (LiteLLM fetches its cost map at import unless
told not to).

Fault seen failing (2026-12-07): LITELLM_LOCAL_MODEL_COST_MAP and LITELLM_OFFLINE_MODE unset
(three lookups of raw.githubusercontent.com; LiteLLM swallows the error, so only the guard on
name lookups, not the one on connections, saw them).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from devtools.apiserver import LocalRerankServer

pytestmark = pytest.mark.server

KEY = "client-key"
QUERY = "Which city is the capital of France?"
DOCS = [
    "Paris is the capital and largest city of France.",
    "Bananas are yellow when ripe.",
    "Lyon is a city in France, known for its cuisine.",
    "The Eiffel Tower is in Paris.",
    "Berlin is the capital of Germany.",
]
LANGCHAIN_ENV = Path(__file__).parent / "envs" / "langchain"


def is_loopback(host: object) -> bool:
    if host in ("localhost", b"localhost"):
        return True
    try:
        return ipaddress.ip_address(host.decode() if isinstance(host, bytes) else host).is_loopback
    except ValueError:
        return False


@pytest.fixture(scope="module", autouse=True)
def loopback_only():
    """Refuse, and remember, any name lookup or connection this process tries beyond the
    loopback (a client that swallows the error would otherwise go unnoticed)."""
    tried: list[object] = []
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(sock, address):
        if isinstance(address, tuple) and not is_loopback(address[0]):
            tried.append(address)
            raise OSError(f"test clients must not leave 127.0.0.1: {address}")
        return connect(sock, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host is not None and not is_loopback(host):
            tried.append(host)
            raise socket.gaierror(f"test clients must not look up {host}")
        return getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.getaddrinfo = guarded_connect, guarded_getaddrinfo
    saved = {k: os.environ.get(k) for k in ("LITELLM_LOCAL_MODEL_COST_MAP", "LITELLM_OFFLINE_MODE")}
    os.environ.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_OFFLINE_MODE="true")
    try:
        yield tried
    finally:
        socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert tried == [], f"clients tried to reach {tried}"


@pytest.fixture(scope="module")
def server(model_dir):
    with LocalRerankServer(model_dir, env={"RERANKER_API_KEY": KEY}) as s:
        yield s


@pytest.fixture(scope="module")
def scores(reranker):
    return reranker.score(QUERY, DOCS)


@pytest.fixture(scope="module")
def order(scores):
    return sorted(range(len(DOCS)), key=lambda i: -scores[i])


# -- Cohere ------------------------------------------------------------------------------------


def test_cohere_client_v2(server, scores, order):
    import cohere

    co = cohere.ClientV2(api_key=KEY, base_url=server.base_url)
    response = co.rerank(model="qwen3-reranker-8b", query=QUERY, documents=DOCS, top_n=3)
    assert [(r.index, r.relevance_score) for r in response.results] == [
        (i, scores[i]) for i in order[:3]
    ]
    assert response.meta.tokens.input_tokens > 0 and response.meta.billed_units.search_units == 1
    # cohere-haystack and Cohere's own default: max_tokens_per_doc=4096
    response = co.rerank(
        model="m", query=QUERY, documents=DOCS, max_tokens_per_doc=4096, priority=1
    )
    assert [r.relevance_score for r in response.results] == [scores[i] for i in order]


def test_cohere_client_v1_with_documents(server, scores, order):
    import cohere

    co = cohere.Client(api_key=KEY, base_url=server.base_url)
    response = co.rerank(model="m", query=QUERY, documents=DOCS, top_n=2, return_documents=True)
    assert [(r.index, r.relevance_score, r.document.text) for r in response.results] == [
        (i, scores[i], DOCS[i]) for i in order[:2]
    ]


def test_cohere_client_reports_a_bad_key(server):
    import cohere

    co = cohere.ClientV2(api_key="wrong", base_url=server.base_url)
    with pytest.raises(cohere.core.api_error.ApiError) as caught:
        co.rerank(model="m", query=QUERY, documents=DOCS)
    assert caught.value.status_code == 401


# -- LiteLLM -------------------------------------------------------------------------------------


def test_litellm_cohere_provider(server, scores, order):
    import litellm

    response = litellm.rerank(
        model="cohere/qwen3-reranker-8b",
        query=QUERY,
        documents=DOCS,
        top_n=3,
        api_base=server.base_url,
        api_key=KEY,
    )
    assert [(r["index"], r["relevance_score"]) for r in response.results] == [
        (i, scores[i]) for i in order[:3]
    ]
    assert response.meta["tokens"]["input_tokens"] > 0


def test_litellm_hosted_vllm_provider_with_instruction(server, reranker, order, scores):
    import litellm

    instruction = "Given a question, find the passage naming the city"
    response = litellm.rerank(
        model="hosted_vllm/qwen3-reranker-8b",
        query=QUERY,
        documents=DOCS,
        instruction=instruction,
        api_base=server.base_url,
        api_key=KEY,
    )
    want = reranker.score(QUERY, DOCS, instruction=instruction)
    got = [(r["index"], r["relevance_score"]) for r in response.results]
    assert got == sorted(enumerate(want), key=lambda p: -p[1])
    assert want != scores
    assert response.results[0]["document"]["text"] == DOCS[got[0][0]]  # /rerank returns them
    assert response.meta["billed_units"]["search_units"] == 1


# -- LlamaIndex: Jina's shape and TEI's ----------------------------------------------------------


def nodes():
    from llama_index.core.schema import NodeWithScore, TextNode

    return [NodeWithScore(node=TextNode(text=d, id_=str(i)), score=0.0) for i, d in enumerate(DOCS)]


def test_llamaindex_jina_postprocessor(server, scores, order):
    from llama_index.postprocessor.jinaai_rerank import JinaRerank

    rerank = JinaRerank(base_url=f"{server.base_url}/v1", api_key=KEY, top_n=3, model="m")
    kept = rerank.postprocess_nodes(nodes(), query_str=QUERY)
    assert [(int(n.node.id_), n.score) for n in kept] == [(i, scores[i]) for i in order[:3]]


def test_llamaindex_tei_postprocessor(server, scores, order):
    from llama_index.postprocessor.tei_rerank import TextEmbeddingInference

    rerank = TextEmbeddingInference(base_url=server.base_url, auth_token=f"Bearer {KEY}", top_n=2)
    kept = rerank.postprocess_nodes(nodes(), query_str=QUERY)
    assert [(int(n.node.id_), n.score) for n in kept] == [(i, scores[i]) for i in order[:2]]


# -- LangChain, in its own environment ------------------------------------------------------------


@pytest.fixture(scope="module")
def langchain_python() -> Path:
    """The LangChain environment's interpreter, synced from its lock (a no-op once synced)."""
    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv, "uv is needed to sync tests/envs/langchain"
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)
    subprocess.run(
        [uv, "sync", "--frozen", "--quiet", "--project", str(LANGCHAIN_ENV)],
        check=True,
        env=env,
        timeout=600,
    )
    return LANGCHAIN_ENV / ".venv" / "bin" / "python"


def test_langchain_cohere_rerank(server, scores, order, langchain_python):
    python = langchain_python
    out = subprocess.run(
        [
            str(python),
            str(LANGCHAIN_ENV / "client.py"),
            server.base_url,
            KEY,
            QUERY,
            json.dumps(DOCS),
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout) == [[i, scores[i]] for i in order[:3]]


# -- what RAG apps send, replayed from their source ------------------------------------------------


def open_webui_body(documents):
    """Open WebUI's external reranker (open-webui/open-webui
    backend/open_webui/retrieval/models/external.py, ``ExternalReranker.predict``), read at
    commit ab233f82c11b (the version the stored index names; its date is not recorded there and
    the repository is too large to mirror): the payload is built at lines 34-39 and POSTed
    (line 53) to ``self.url`` as configured, a full URL (default
    http://localhost:8080/v1/rerank, line 19), with the headers of :func:`open_webui_headers`;
    the answer's ``results`` are sorted by ``index`` and each ``relevance_score`` taken. A
    later stored revision (single-quoted, with a ``system_oauth`` key option; no commit named)
    builds the same payload."""
    return {"model": "reranker", "query": QUERY, "documents": documents, "top_n": len(documents)}


def open_webui_headers(user=None):
    """Open WebUI's reranker headers (external.py at ab233f82c11b, lines 45-51): JSON and a
    Bearer key, and, only when ENABLE_FORWARD_USER_INFO_HEADERS is on (default off) and a user
    is known, ``include_user_info_headers`` (backend/open_webui/utils/headers.py at
    de94a84af545): the user's name (URL-quoted, spaces kept), id, email and role.
    ``user``: a dict with those four keys, or None for the default (no user headers)."""
    from urllib.parse import quote

    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    if user is not None:
        headers |= {
            "X-OpenWebUI-User-Name": quote(user["name"], safe=" "),
            "X-OpenWebUI-User-Id": user["id"],
            "X-OpenWebUI-User-Email": user["email"],
            "X-OpenWebUI-User-Role": user["role"],
        }
    return headers


def dify_openai_compatible_body(documents, top_n=None):
    """Dify's OpenAI-API-compatible plugin (langgenius/dify-official-plugins
    models/openai_api_compatible/models/rerank/rerank.py, ``OpenAIRerankModel._invoke``), read
    at commit 7af22831a58d (2026-08-21; the file last changed in e7a10b0a18ff, 2026-08-17):
    the payload is built at lines 107-112 and POSTed (lines 117-122) to
    ``{endpoint_url}/rerank`` (``endpoint_url`` right-stripped of "/", line 94) with JSON and,
    when an API key is set, Bearer headers (lines 101-103). ``model`` is the credential's
    ``endpoint_model_name``, else the model name (line 96). No ``return_documents`` and no
    ``score_threshold`` are sent: the threshold (0.8 in its credential check, with
    ``top_n=3``) and ``top_n`` are applied to the answer on the client's side, which takes each
    document's text from its own list, not from the answer."""
    return {
        "model": "qwen3-reranker",
        "query": QUERY,
        "documents": documents,
        "top_n": top_n if top_n is not None else len(documents),
    }


def dify_jina_body(documents, model="jina-reranker-v2-base-multilingual", top_n=None):
    """Dify's Jina plugin (langgenius/dify-official-plugins models/jina/models/rerank/rerank.py,
    ``JinaRerankModel._invoke``), read at commit 7af22831a58d (2026-08-21; the file last
    changed in 034376c54b5d, 2026-05-27): the payload is built at lines 76-82 and POSTed
    (line 85) to ``base_url + "/rerank"`` (default https://api.jina.ai/v1, "/" suffix removed;
    lines 67-70) with Bearer and JSON headers (lines 71-74); ``top_n`` is passed as given, so
    it may be null (its credential check passes none); for jina-clip-v1, jina-clip-v2,
    jina-embeddings-v4 and jina-reranker-m0 each document is ``{"text": ...}``
    (models/jina/models/shared/input.py, ``transform_jina_input_text``, lines 5-18, same
    commit; that file last changed in d7095422dd39, 2025-12-09)."""
    wrap = model in ("jina-clip-v1", "jina-clip-v2", "jina-embeddings-v4", "jina-reranker-m0")
    return {
        "model": model,
        "query": QUERY,
        "documents": [{"text": d} if wrap else d for d in documents],
        "top_n": top_n,
        "return_documents": False,
    }


AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.mark.parametrize(
    "user", [None, {"name": "Zoë Ä. Ng", "id": "u-1", "email": "z@x.org", "role": "user"}]
)
def test_open_webui_request(server, scores, user):
    """With and without the forwarded user headers (ENABLE_FORWARD_USER_INFO_HEADERS)."""
    headers = open_webui_headers(user)
    status, body = server.post("/v1/rerank", open_webui_body(DOCS), headers=headers)
    assert status == 200, body
    got = [r["relevance_score"] for r in sorted(body["results"], key=lambda r: r["index"])]
    assert got == scores


@pytest.mark.parametrize("prefix", ["", "/v1"])  # endpoint_url with or without /v1
def test_dify_openai_compatible_request(server, scores, order, prefix):
    status, body = server.post(
        f"{prefix}/rerank", dify_openai_compatible_body(DOCS, 3), headers=AUTH
    )
    assert status == 200, body
    assert [(r["index"], r["relevance_score"], r["document"]["text"]) for r in body["results"]] == [
        (i, scores[i], DOCS[i]) for i in order[:3]
    ]
    assert body["usage"]["total_tokens"] > 0  # Dify reads usage.total_tokens


@pytest.mark.parametrize("model", ["jina-reranker-v2-base-multilingual", "jina-reranker-m0"])
def test_dify_jina_request(server, scores, order, model):
    status, body = server.post("/v1/rerank", dify_jina_body(DOCS, model), headers=AUTH)
    assert status == 200, body
    assert [(r["index"], r["relevance_score"]) for r in body["results"]] == [
        (i, scores[i]) for i in order
    ]
    assert all("document" not in r for r in body["results"])
    assert body["model"] == model


# -- docs/usage.md's "Self-hosting with standard clients", as written -----------------------------


def readme_section() -> str:
    from test_readme import page

    return (
        page("docs/usage.md")
        .split("## Self-hosting with standard clients", 1)[1]
        .split("\n## ", 1)[0]
    )


def test_readme_self_hosting_as_written(model_dir, tmp_path, langchain_python):
    """The server line, the curl and every client snippet, word for word but for the port;
    LangChain's in its own environment."""
    import re
    import shlex
    import signal
    import time

    from test_readme import as_written, is_serve_command

    from devtools.localserver import free_port

    section = readme_section()
    lines = [ln for b in re.findall(r"```bash\n(.*?)```", section, re.S) for ln in b.splitlines()]
    serve = next(ln for ln in lines if " rerank serve " in ln and is_serve_command(ln))
    curl = "\n".join(lines[lines.index(next(ln for ln in lines if ln.startswith("curl"))) :])
    curl = curl.replace("\\\n", " ")
    port = str(free_port())
    (tmp_path / "tiny-model").symlink_to(model_dir)
    argv, env = as_written(serve.replace("--port 8080", f"--port {port}"))
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            health = subprocess.run(
                ["curl", "-s", f"{base}/health"], capture_output=True, text=True
            )
            if '"ready"' in health.stdout:
                break
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.5)
        answer = subprocess.run(
            shlex.split(curl.replace(":8080/", f":{port}/")),
            capture_output=True,
            text=True,
            timeout=60,
        )
        body = json.loads(answer.stdout)
        assert [r["index"] for r in body["results"]] in ([0], [1]) and body["usage"][
            "total_tokens"
        ] > 0
        snippets = re.findall(r"```python\n(.*?)```", section, re.S)
        assert len(snippets) == 4
        for code in snippets:
            code = code.replace("http://127.0.0.1:8080", base)
            if "langchain" in code:
                code += "\nprint(len(ranked))"
                python = LANGCHAIN_ENV / ".venv" / "bin" / "python"
                out = subprocess.run(
                    [str(python), "-c", code], capture_output=True, text=True, timeout=120
                )
                assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr[-2000:]
                continue
            scope: dict = {}
            exec(compile(code, "docs/usage.md", "exec"), scope)
            assert len(scope["ranked"]) >= 1, code
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
