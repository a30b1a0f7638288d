"""ToolActor settings: the one typed configuration of the process (prefix ``TOOLSIM_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, IPvAnyNetwork, model_validator

from toolsim.config import CommonSettings

UtilityTool = Literal["search", "calculator", "python"]


class ActorSettings(CommonSettings):
    host: str = "127.0.0.1"
    """Interface the ToolActor listens on."""
    port: int = Field(default=8001, ge=1, le=65535)
    """Port the ToolActor listens on."""
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    """Largest request body accepted; larger ones get 413."""
    cache_ttl_s: int = Field(default=7 * 86_400, ge=1)
    """How long a cached observation lives in Redis."""
    cache_redis_url: str | None = None
    """A Redis for the observation cache alone (default: ``redis_url``'s). Observations may
    be evicted under memory pressure, toolsets and episodes never: give the cache a Redis with
    ``maxmemory`` and ``allkeys-lru``, the registry one with ``noeviction`` (``k8s/redis.yaml``)."""
    memory_cache_size: int = Field(default=100_000, ge=1)
    """Entries kept by the in-memory LRU cache (used when no Redis URL is set)."""
    near_cache_max_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    """Bytes of each in-process near-cache: whole responses kept for replay, and (with Redis)
    observations kept in front of it, so a repeated call never crosses the network. 0: off."""
    near_cache_ttl_s: float = Field(default=60.0, gt=0)
    """How long a near-cache entry lives: how long a replica may go on serving what an
    operator flushed from Redis (an observation under its key never changes otherwise)."""
    episode_ttl_s: int = Field(default=86_400, ge=60)
    """How long an episode and its history live after creation."""
    temperature: float = Field(default=0.7, ge=0, le=2)
    """Sampling temperature of the simulator."""
    presence_penalty: float = Field(default=1.0, ge=0, le=2)
    """Penalty on tokens an observation already holds: SmolLM2-135M otherwise writes one
    value into several fields (``bench/quality.py``)."""
    max_tokens: int = Field(default=384, ge=16, le=4096)
    """Longest observation, in tokens; a longer one is regenerated."""
    max_generation_attempts: int = Field(default=3, ge=1, le=10)
    """Generations tried (each with a new seed) before a call fails with 502."""
    default_seed: int = 0
    """Seed used when neither the request nor its episode gives one."""
    history_events: int = Field(default=8, ge=0, le=64)
    """Earlier calls of the episode shown to the simulator."""
    episode_max_events: int = Field(default=1024, ge=1)
    """Events an episode keeps (the newest; ``GET /v1/episodes/{id}`` shows them). Fault
    policies count earlier occurrences of a call within these."""
    memory_max_toolsets: int = Field(default=10_000, ge=1)
    """Toolsets the in-memory registry holds (no Redis URL); more are refused with 507."""
    memory_max_episodes: int = Field(default=10_000, ge=1)
    """Episodes the in-memory registry holds (no Redis URL); the oldest are dropped first."""
    search_corpus: list[Path] = Field(default_factory=list)
    """Passage files (JSON/JSONL) behind the live ``search`` tool, as a JSON list of paths."""
    live_timeout_s: float = Field(default=30.0, gt=0)
    """Longest wait for a real tool endpoint in ``live``/``record`` mode."""
    live_tools: list[UtilityTool] = Field(default_factory=list)
    """Utility tools that may run for real (``live``/``record``); none unless listed."""
    live_hosts: list[str] = Field(default_factory=list)
    """Hosts ``live_endpoints`` may name (``api.example.com``, ``*.example.com``); none unless
    listed."""
    live_allowed_networks: list[IPvAnyNetwork] = Field(default_factory=list)
    """Non-public networks live endpoints may resolve to (loopback, private, link-local and
    metadata addresses are refused otherwise), e.g. ``["10.0.5.0/24"]``."""
    live_max_response_bytes: int = Field(default=1_048_576, ge=1024)
    """Largest answer read from a live endpoint (then 502)."""

    @model_validator(mode="after")
    def _check_live(self) -> Self:
        if "search" in self.live_tools and not self.search_corpus:
            raise ValueError(
                "TOOLSIM_LIVE_TOOLS enables search, which needs passages: set "
                "TOOLSIM_SEARCH_CORPUS='[\"corpus.json\"]'"
            )
        if self.cache_redis_url is not None and not self.cache_redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ValueError(
                f"TOOLSIM_CACHE_REDIS_URL={self.cache_redis_url!r} is not a Redis URL; use "
                "redis://host:port/db (or unset it to keep the cache on TOOLSIM_REDIS_URL)"
            )
        return self
