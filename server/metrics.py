"""Prometheus metrics: request counts and latency per route, embedding batch sizes,
queue depths, generated tokens and tokens/s, index size."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("sugar_requests_total", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram("sugar_request_seconds", "request latency", ["route"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.batch_size = Histogram("sugar_embed_batch_size", "samples per embedding forward pass",
                                    registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.queue_depth = Gauge("sugar_queue_depth", "waiting work", ["queue"], registry=r)
        self.generated = Counter("sugar_generated_tokens_total", "generated tokens", registry=r)
        self.tokens_per_s = Gauge("sugar_generation_tokens_per_second", "last request's decode rate",
                                  registry=r)
        self.index_documents = Gauge("sugar_index_documents", "documents in the index", registry=r)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def tokens(self, n: int, seconds: float) -> None:
        self.generated.inc(n)
        if seconds > 0:
            self.tokens_per_s.set(n / seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
