"""A bounded in-process tier in front of a shared observation cache (Redis).

A repeated call on a replica reads its observation from process memory instead of crossing
the network. Entries are bounded by total bytes and by age: an observation under a key never
changes once stored (the key is a digest of everything that determines it), so the age bound
only limits how long a replica keeps serving what an operator removed from Redis (a flushed
cache, an overwritten ``record``-mode recording). Claims, health and probes are the shared
cache's: coalescing across replicas works as without this tier.
"""

from __future__ import annotations

from cachetools import TTLCache

from toolsim_toolactor.cache.base import Claim, ObservationCache


class NearCache(ObservationCache):
    def __init__(self, shared: ObservationCache, *, max_bytes: int, ttl_s: float) -> None:
        self._shared = shared
        self._near: TTLCache[str, bytes] = TTLCache(maxsize=max_bytes, ttl=ttl_s, getsizeof=len)

    async def get(self, key: str) -> bytes | None:
        value = self._near.get(key)
        if value is not None:
            return value
        value = await self._shared.get(key)
        if value is not None:
            self._keep(key, value)
        return value

    async def set(self, key: str, value: bytes) -> None:
        await self._shared.set(key, value)
        self._keep(key, value)

    def _keep(self, key: str, value: bytes) -> None:
        if len(value) <= self._near.maxsize:  # a larger one would raise: it stays shared only
            self._near[key] = value

    @property
    def healthy(self) -> bool:
        return self._shared.healthy

    async def claim(self, key: str) -> Claim | None:
        return await self._shared.claim(key)

    async def claimed(self, key: str) -> bool:
        return await self._shared.claimed(key)

    async def ping(self) -> bool:
        return await self._shared.ping()

    async def aclose(self) -> None:
        await self._shared.aclose()

    def __len__(self) -> int:
        return len(self._near)
