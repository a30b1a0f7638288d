"""Redis observation cache with a short circuit breaker.

When Redis stops answering, every call would otherwise wait out a socket timeout. After a
failure the cache is bypassed for ``retry_interval_s``; the next call after that probes Redis
again, so the service recovers by itself when Redis returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from toolsim_toolactor.cache.base import ObservationCache

log = logging.getLogger(__name__)


class RedisCache(ObservationCache):
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "toolsim:",
        ttl_s: int = 7 * 86_400,
        retry_interval_s: float = 0.5,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self._r = client
        self._prefix = prefix + "obs:"
        self._ttl_s = ttl_s
        self._retry_interval_s = retry_interval_s
        self._down_until = 0.0
        self._on_error = on_error

    @property
    def healthy(self) -> bool:
        return self._down_until == 0.0

    async def get(self, key: str) -> bytes | None:
        if self._bypassed():
            return None
        try:
            value = await self._r.get(self._prefix + key)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        self._down_until = 0.0
        return value.encode() if isinstance(value, str) else value

    async def set(self, key: str, value: bytes) -> None:
        if self._bypassed():
            return
        try:
            await self._r.set(self._prefix + key, value, ex=self._ttl_s)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return
        self._down_until = 0.0

    async def ping(self) -> bool:
        try:
            ok = bool(await self._r.ping())
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return False
        self._down_until = 0.0
        return ok

    async def aclose(self) -> None:
        await self._r.aclose()

    def _bypassed(self) -> bool:
        return self._down_until != 0.0 and time.monotonic() < self._down_until

    def _failed(self, exc: BaseException) -> None:
        if self.healthy:
            log.warning("Redis cache unreachable, bypassing it: %r", exc)
        self._down_until = time.monotonic() + self._retry_interval_s
        if self._on_error is not None:
            self._on_error()
