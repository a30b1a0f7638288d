"""Settings shared by every toolsim process (prefix ``TOOLSIM_``).

Each service subclasses ``CommonSettings`` with its own fields, so one process still has one
typed settings class. Nothing is read at import time: ``load()`` builds settings when asked,
and tests pass overrides as keyword arguments.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from toolsim.model import MODEL_DIRNAME


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "toolsim"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOOLSIM_", extra="ignore")

    cache_dir: Path = Field(default_factory=default_cache_dir)
    """Where the converted model and the vLLM venv live (default ``~/.cache/toolsim``)."""
    model_dir: Path | None = None
    """The model folder; default ``<cache_dir>/models/SmolLM2-135M-Instruct``."""
    backend: Literal["embedded", "vllm"] = "embedded"
    """Which LLM backend simulates tools: the in-process model or an OpenAI-compatible server."""
    vllm_url: str = "http://127.0.0.1:8000/v1"
    """Base URL (ending in ``/v1``) of the OpenAI-compatible server when ``backend=vllm``."""
    vllm_model: str = "smollm2"
    """The model name the server serves (``--served-model-name``)."""
    vllm_api_key: str | None = None
    """Bearer token for the server, if it wants one."""
    llm_timeout_s: float = Field(default=120.0, gt=0)
    """Longest wait for one generation before the call fails with 503."""
    max_concurrent_generations: int = Field(default=64, ge=1)
    """Generations in flight at once in this process; more wait their turn (the backend
    batches what is in flight). The wait does not count against ``llm_timeout_s``."""
    llm_connect_retries: int = Field(default=2, ge=0, le=10)
    """Retries on connection errors and 502/503 from the server (with backoff)."""
    embedded_max_batch: int = Field(default=16, ge=1, le=256)
    """Most concurrent generations the embedded backend decodes as one batch."""
    embedded_batch_wait_ms: float = Field(default=20.0, ge=0)
    """How long the embedded backend waits for more requests to join a batch."""
    embedded_threads: int | None = Field(default=None, ge=1)
    """torch threads for the embedded backend (default: torch's choice)."""
    embedded_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Weights dtype of the embedded backend; ``auto`` picks bfloat16 where the CPU has it."""
    embedded_prefix_cache_bytes: int = Field(default=1 << 30, ge=0)
    """KV the embedded backend keeps for prompts that start alike (0: no prefix cache)."""
    redis_url: str | None = None
    """``redis://host:port/db``: share the cache and registry through Redis. Unset: in memory."""
    redis_prefix: str = "toolsim:"
    """Prefix of every Redis key toolsim writes."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level of the service."""
    api_keys: SecretStr | None = None
    """Comma-separated keys callers send as ``Authorization: Bearer KEY``; unset: open."""
    rate_limit_rps: float | None = Field(default=None, gt=0)
    """Requests per second each API key may make (token bucket; shared through Redis)."""
    rate_limit_burst: int | None = Field(default=None, ge=1)
    """Requests a key may make at once before its rate applies (default: the rate, >= 1)."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.redis_url is not None and not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ValueError(
                f"TOOLSIM_REDIS_URL={self.redis_url!r} is not a Redis URL; "
                "use redis://host:port/db (or unset it for the in-memory default)"
            )
        if self.rate_limit_rps is not None and self.api_keys is None:
            raise ValueError("TOOLSIM_RATE_LIMIT_RPS limits each API key: set TOOLSIM_API_KEYS too")
        if self.api_keys is not None and not self.api_keys.get_secret_value().strip(" ,"):
            raise ValueError("TOOLSIM_API_KEYS is empty: list keys (a,b) or unset it")
        if self.backend == "vllm" and not self.vllm_url.startswith(("http://", "https://")):
            raise ValueError(
                f"TOOLSIM_VLLM_URL={self.vllm_url!r} must be an http(s) URL ending in /v1"
            )
        return self

    @property
    def resolved_model_dir(self) -> Path:
        return self.model_dir or self.cache_dir / "models" / MODEL_DIRNAME
