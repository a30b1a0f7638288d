"""Prometheus metrics of one ToolActor, on a registry of its own (apps never share one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ActorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "toolsim_requests", "HTTP requests answered", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "toolsim_request_latency_seconds",
            "Request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.observations = Counter(
            "toolsim_observations", "Observations returned", ["source"], registry=r
        )
        self.generation_latency = Histogram(
            "toolsim_generation_latency_seconds",
            "Latency of one backend generation",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter("toolsim_cache_hits", "Observation cache hits", registry=r)
        self.cache_misses = Counter("toolsim_cache_misses", "Observation cache misses", registry=r)
        self.cache_errors = Counter(
            "toolsim_cache_errors", "Cache operations that failed (cache bypassed)", registry=r
        )
        self.coalesced = Counter(
            "toolsim_coalesced_calls", "Calls answered by an identical in-flight call", registry=r
        )
        self.coalesced_replicas = Counter(
            "toolsim_coalesced_replica_calls",
            "Generations left to another replica that held the key's claim (shared Redis)",
            registry=r,
        )
        self.retries = Counter(
            "toolsim_generation_retries", "Generations retried", ["reason"], registry=r
        )
        self.schema_violations = Counter(
            "toolsim_schema_violations",
            "Generations that failed the output schema (or were not JSON)",
            registry=r,
        )
        self.backend_errors = Counter(
            "toolsim_backend_errors", "Calls that failed in the LLM backend", ["code"], registry=r
        )
        self.cache_degraded = Gauge(
            "toolsim_cache_degraded", "1 while the Redis cache is unreachable", registry=r
        )

        self.live_schema_mismatches = Counter(
            "toolsim_live_schema_mismatches",
            "Live observations that broke the tool's output schema (returned, not recorded)",
            registry=r,
        )
        self.prompt_tokens = Counter(
            "toolsim_prompt_tokens", "Prompt tokens sent to the backend", registry=r
        )
        self.completion_tokens = Counter(
            "toolsim_completion_tokens", "Tokens the backend generated", registry=r
        )
        self.check_failures = Counter(
            "toolsim_check_failures",
            "Schema-valid generations that failed a post-generation check",
            ["flag", "reason"],
            registry=r,
        )
        self.flagged_observations = Counter(
            "toolsim_flagged_observations",
            "Observations returned flagged after every attempt failed a gate",
            ["flag"],
            registry=r,
        )
        self.fixed_observations = Counter(
            "toolsim_fixed_observations",
            "Observations their decoding schema fixed whole, built without the backend",
            registry=r,
        )
        self.schema_inferences = Counter(
            "toolsim_output_schema_inferences",
            "Output schemas of tools that came without one: inferred, cached, fallback",
            ["outcome"],
            registry=r,
        )
        self.faults = Counter(
            "toolsim_faults", "Faults injected by a fault policy", ["kind"], registry=r
        )
        self.fault_delay = Counter(
            "toolsim_fault_delay_seconds", "Latency added by fault policies", registry=r
        )
        self.cache_observations = self.observations.labels("cache")
        self.simulated_observations = self.observations.labels("simulated")
        self.live_observations = self.observations.labels("live")
        self._per_route: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        # labels() takes a lock and builds a key each call: bind the children once per route
        children = self._per_route.get((route, status))
        if children is None:
            children = (self.requests.labels(route, str(status)), self.latency.labels(route))
            self._per_route[(route, status)] = children
        children[0].inc()
        children[1].observe(seconds)
