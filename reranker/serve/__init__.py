"""``rerank serve``: the rerank API that RAG tools already speak, over the Cog path's service.

A second front end beside ``predict.py``: the same :class:`~reranker.service.RerankService`
(admission bounds, scheduler, cross-request batching, replicas, long-document chunking, GPU
fault handling), reached over the wire formats of Cohere (``/v2/rerank``, ``/v1/rerank``),
Jina and vLLM (``/v1/rerank``, ``/rerank``) and text-embeddings-inference (``/rerank`` with
``texts``). One module each: ``command`` (flags, settings, uvicorn), ``app`` (routes, model
loading, health), ``schemas`` (wire bodies <-> ``RerankRequest`` / ``RerankResult``),
``errors`` (exceptions -> HTTP answers), ``guard`` (API key, body bounds, concurrency) and
``metrics`` (Prometheus).
"""
