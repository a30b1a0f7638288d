"""Redis observation cache with a short circuit breaker, and generation claims shared by
every replica.

When Redis stops answering, every call would otherwise wait out a socket timeout. After a
failure the cache is bypassed for ``retry_interval_s``; the next call after that probes Redis
again, so the service recovers by itself when Redis returns.

A claim is a redis-py ``Lock`` (``SET NX PX`` with a random token, released by a
compare-and-delete script) on ``<prefix>claim:<key>``, ``claim_ttl_s`` long and renewed every
third of that while its generation runs: a replica that dies mid-generation releases its claims
by expiry within ``claim_ttl_s``, and a slow generation keeps its claim. While Redis is down
every claim is granted (each replica generates for itself, as without Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError

from toolsim_toolactor.cache.base import LOCAL_CLAIM, Claim, ObservationCache

log = logging.getLogger(__name__)


class RedisCache(ObservationCache):
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "toolsim:",
        ttl_s: int = 7 * 86_400,
        retry_interval_s: float = 0.5,
        claim_ttl_s: float = 10.0,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self._r = client
        self._prefix = prefix + "obs:"
        self._claim_prefix = prefix + "claim:"
        self._claim_ttl_s = claim_ttl_s
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

    async def claim(self, key: str) -> Claim | None:
        if self._bypassed():
            return LOCAL_CLAIM
        lock = Lock(
            self._r,
            self._claim_prefix + key,
            timeout=self._claim_ttl_s,
            blocking=False,
            thread_local=False,
        )
        try:
            acquired = await lock.acquire()
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return LOCAL_CLAIM
        return _RedisClaim(lock, self._claim_ttl_s / 3) if acquired else None

    async def claimed(self, key: str) -> bool:
        if self._bypassed():
            return False
        try:
            return bool(await self._r.exists(self._claim_prefix + key))
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return False

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


class _RedisClaim(Claim):
    """A held lock, renewed in the background until released."""

    def __init__(self, lock: Lock, renew_every_s: float) -> None:
        self._lock = lock
        self._renewer = asyncio.create_task(self._renew(renew_every_s))

    async def _renew(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self._lock.reacquire()
            except (LockError, RedisError, OSError):
                return  # lost (expired, or Redis gone): others may generate too; harmless

    async def release(self) -> None:
        self._renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._renewer
        with contextlib.suppress(LockError, RedisError, OSError):
            await self._lock.release()
