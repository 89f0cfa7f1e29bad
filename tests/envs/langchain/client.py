"""LangChain's Cohere reranker against `rerank serve`, as README's one-liner writes it.

    python client.py BASE_URL API_KEY QUERY DOCUMENTS_JSON TOP_N

Prints ``[[index, relevance_score], ...]`` of the documents LangChain keeps, in its order.
Only 127.0.0.1 may be reached: any other address fails the run.
"""

import ipaddress
import json
import socket
import sys

_connect = socket.socket.connect


def _loopback_only(sock, address):
    host = address[0] if isinstance(address, tuple) else None
    if host is not None and not ipaddress.ip_address(host).is_loopback:
        raise OSError(f"the client tried to reach {address}")
    return _connect(sock, address)


socket.socket.connect = _loopback_only

from langchain_cohere import CohereRerank  # noqa: E402
from langchain_core.documents import Document  # noqa: E402

base_url, key, query, documents, top_n = sys.argv[1:]
reranker = CohereRerank(
    base_url=base_url, cohere_api_key=key, model="qwen3-reranker-8b", top_n=int(top_n)
)
docs = [
    Document(page_content=text, metadata={"i": i}) for i, text in enumerate(json.loads(documents))
]
kept = reranker.compress_documents(docs, query)
print(json.dumps([[d.metadata["i"], d.metadata["relevance_score"]] for d in kept]))
