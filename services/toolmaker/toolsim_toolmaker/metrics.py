"""Prometheus metrics of one ToolMaker, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class MakerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "toolmaker_requests", "HTTP requests answered", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "toolmaker_request_latency_seconds",
            "Request latency",
            ["route"],
            buckets=BUCKETS,
            registry=r,
        )
        self.toolsets = Counter("toolmaker_toolsets", "Toolsets produced", ["origin"], registry=r)
        self.generations = Counter(
            "toolmaker_generations", "LLM generations for tool interfaces", registry=r
        )
        self.invalid_generations = Counter(
            "toolmaker_invalid_generations",
            "Generations refused by validation",
            ["reason"],
            registry=r,
        )
        self.schema_inferences = Counter(
            "toolmaker_output_schema_inferences",
            "Output schemas of tools that came without one: inferred, cached, fallback",
            ["outcome"],
            registry=r,
        )
        self.generation_cache_hits = Counter(
            "toolmaker_generation_cache_hits", "Task requests answered from the cache", registry=r
        )

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
