"""Prometheus metrics of one server (``GET /metrics``), with the standard client library.

Each app has its own registry, so two servers in one process (tests) never share counters.
Forward passes are timed where they run: :meth:`ServeMetrics.watch` registers a pass observer
with the scheduler (called on the replica's worker after each pass), so the pass histogram
counts every pass once, however many requests share it; its ``_count`` is the number of passes
and ``reranker_forward_pass_documents`` shows how full they were.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from ..runtime.passes import PassRecord
from ..service import Metrics, RerankService

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
DOCUMENT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServeMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "reranker_requests", "HTTP requests answered", ["route", "status"], registry=r
        )
        self.errors = Counter(
            "reranker_request_errors", "Requests answered with an error", ["kind"], registry=r
        )
        self.documents = Counter("reranker_documents", "Documents scored", registry=r)
        self.tokens = Counter(
            "reranker_prompt_tokens", "Prompt tokens scored, after truncation", registry=r
        )
        self.truncated = Counter(
            "reranker_truncated_documents", "Documents cut to fit the window", registry=r
        )
        self.in_flight = Gauge(
            "reranker_requests_in_flight", "Rerank requests being answered", registry=r
        )
        self.queued = Gauge(
            "reranker_queued_documents", "Documents waiting for a forward pass", registry=r
        )
        self.waiting = Gauge(
            "reranker_requests_waiting_admission",
            "Requests waiting for room under the in-flight bounds",
            registry=r,
        )
        self.latency = Histogram(
            "reranker_request_duration_seconds",
            "Rerank requests, body received to answer ready",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pass_seconds = Histogram(
            "reranker_forward_pass_seconds",
            "Forward passes (shared by every request they serve)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pass_documents = Histogram(
            "reranker_forward_pass_documents",
            "Prompts per forward pass",
            buckets=DOCUMENT_BUCKETS,
            registry=r,
        )

    def watch(self, service: RerankService) -> None:
        """Read the queue gauges from ``service`` at each scrape; time its passes."""
        reranker = service.reranker
        self.queued.set_function(lambda: reranker.scheduler.queued_documents)
        gates = (reranker.admission.chars, reranker.admission.tokens)
        self.waiting.set_function(lambda: sum(g.waiting for g in gates))
        reranker.scheduler.pass_observers.append(self._passed)

    def _passed(self, record: PassRecord) -> None:
        self.pass_seconds.observe(record.seconds)
        self.pass_documents.observe(record.documents)

    def scored(self, metrics: Metrics, seconds: float) -> None:
        self.documents.inc(metrics.documents)
        self.tokens.inc(metrics.tokens)
        self.truncated.inc(metrics.truncated_documents)
        self.latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
