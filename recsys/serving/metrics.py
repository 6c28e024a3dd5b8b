"""Prometheus metrics of the ranking service, on a registry of its own (one per app).

Exposed at ``GET /metrics``:

- ``setrec_requests_total{endpoint, status}``: answered requests by HTTP status;
- ``setrec_request_latency_seconds{endpoint}``: latency histogram;
- ``setrec_batch_size``: histogram of the micro-batch sizes run by the engine;
- ``setrec_batch_seconds``: time of each micro-batch in the recommender (engine + index search);
- ``setrec_errors_total{endpoint, kind}``: 4xx/5xx answers by kind (validation, unknown_items,
  queue_full, body_too_large, auth, internal, ...);
- ``setrec_queue_depth`` and ``setrec_catalogue_items``: gauges.

Example:
    >>> metrics = ServiceMetrics()
    >>> metrics.observe_request("/v1/recommend", 200, 0.004)
    >>> body, content_type = metrics.render()
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """The service's counters and histograms (a private :class:`CollectorRegistry`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("setrec_requests", "Answered requests.", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram(
            "setrec_request_latency_seconds", "Request latency.", ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.batch_size = Histogram("setrec_batch_size", "Queries per engine batch.", buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram(
            "setrec_batch_seconds", "Time of one batch in the recommender (engine + index).", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.errors = Counter("setrec_errors", "Error answers by kind.", ["endpoint", "kind"], registry=self.registry)
        self.queue_depth = Gauge("setrec_queue_depth", "Queries waiting for a batch.", registry=self.registry)
        self.items = Gauge("setrec_catalogue_items", "Items in the catalogue.", registry=self.registry)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def error(self, endpoint: str, kind: str) -> None:
        """Count one error answer."""
        self.errors.labels(endpoint, kind).inc()

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text exposition."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
