"""Prometheus metrics of one server (its own registry, so several apps in one process do not mix)."""

from __future__ import annotations

from typing import Any, Callable, Hashable

from ..utils import require

prometheus = require("prometheus_client", "server")

_TOKEN_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_ITEM_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServerMetrics:
    """Queue depth, model calls (items, padded tokens, seconds), request latency and responses by status."""

    def __init__(self, queued_items: Callable[[], int]) -> None:
        self.registry = prometheus.CollectorRegistry()
        kw: Any = {"registry": self.registry}
        self.queue = prometheus.Gauge("retrievals_queue_items", "Texts or document windows waiting for a model call", **kw)
        self.queue.set_function(queued_items)
        self.batch_items = prometheus.Histogram("retrievals_batch_items", "Inputs per model call", ["kind"],
                                                buckets=_ITEM_BUCKETS, **kw)
        self.batch_tokens = prometheus.Histogram("retrievals_batch_tokens", "Padded tokens per model call", ["kind"],
                                                 buckets=_TOKEN_BUCKETS, **kw)
        self.batch_seconds = prometheus.Histogram("retrievals_batch_seconds", "Seconds per model call", ["kind"],
                                                  buckets=_SECONDS, **kw)
        self.latency = prometheus.Histogram("retrievals_request_seconds", "Request latency", ["endpoint"],
                                            buckets=_SECONDS, **kw)
        self.responses = prometheus.Counter("retrievals_responses", "Responses by endpoint and status",
                                            ["endpoint", "status"], **kw)

    def on_batch(self, key: Hashable, items: int, tokens: int, seconds: float) -> None:
        kind = str(key[0] if isinstance(key, tuple) else key)
        self.batch_items.labels(kind).observe(items)
        self.batch_tokens.labels(kind).observe(tokens)
        self.batch_seconds.labels(kind).observe(seconds)

    def on_response(self, endpoint: str, status: int, seconds: float) -> None:
        self.responses.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        return prometheus.generate_latest(self.registry)

    content_type = prometheus.CONTENT_TYPE_LATEST
