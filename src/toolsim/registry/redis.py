"""Redis registry: shared by every process; toolsets persist as long as Redis does."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from toolsim.errors import StoreUnavailableError
from toolsim.registry.base import DEFAULT_MAX_EVENTS, JSONDict, Registry

T = TypeVar("T")


class RedisRegistry(Registry):
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "toolsim:",
        episode_ttl_s: int = 86_400,
        max_events: int = DEFAULT_MAX_EVENTS,
    ) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self._r = client
        self._prefix = prefix
        self._episode_ttl_s = episode_ttl_s
        self._max_events = max_events
        self._index_key = f"{prefix}toolsets"

    def _toolset_key(self, toolset_id: str) -> str:
        return f"{self._prefix}toolset:{toolset_id}"

    def _episode_key(self, episode_id: str) -> str:
        return f"{self._prefix}episode:{episode_id}"

    async def put_toolset(self, record: JSONDict) -> None:
        # One transaction: the whole record and its index entry, or neither.
        async def put() -> None:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.set(self._toolset_key(record["id"]), orjson.dumps(record), nx=True)
                pipe.zadd(self._index_key, {record["id"]: time.time()}, nx=True)
                await pipe.execute()

        await self._call(put)

    async def list_toolsets(self, offset: int, limit: int) -> tuple[list[JSONDict], int]:
        async def page() -> tuple[list[JSONDict], int]:
            ids = await self._r.zrange(self._index_key, offset, offset + limit - 1)
            total = await self._r.zcard(self._index_key)
            if not ids:
                return [], int(total)
            keys = [self._toolset_key(i.decode() if isinstance(i, bytes) else str(i)) for i in ids]
            raw = await self._r.mget(keys)
            return [orjson.loads(r) for r in raw if r is not None], int(total)

        return await self._call(page)

    async def put_alias(self, key: str, toolset_id: str) -> None:
        await self._call(lambda: self._r.set(f"{self._prefix}alias:{key}", toolset_id))

    async def get_alias(self, key: str) -> str | None:
        raw = await self._call(lambda: self._r.get(f"{self._prefix}alias:{key}"))
        return raw.decode() if isinstance(raw, bytes) else raw

    async def get_toolset(self, toolset_id: str) -> JSONDict | None:
        raw = await self._call(lambda: self._r.get(self._toolset_key(toolset_id)))
        return orjson.loads(raw) if raw is not None else None

    async def create_episode(self, episode_id: str, meta: JSONDict) -> None:
        key = self._episode_key(episode_id)
        await self._call(lambda: self._r.set(key, orjson.dumps(meta), ex=self._episode_ttl_s))

    async def get_episode(self, episode_id: str) -> JSONDict | None:
        raw = await self._call(lambda: self._r.get(self._episode_key(episode_id)))
        return orjson.loads(raw) if raw is not None else None

    async def append_events(self, episode_id: str, events: list[JSONDict]) -> None:
        if not events:
            return
        key = self._episode_key(episode_id) + ":events"

        async def push() -> None:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.rpush(key, *[orjson.dumps(e) for e in events])
                pipe.ltrim(key, -self._max_events, -1)
                pipe.expire(key, self._episode_ttl_s)
                await pipe.execute()

        await self._call(push)

    async def episode_events(self, episode_id: str, last: int | None = None) -> list[JSONDict]:
        count = self._max_events if last is None else min(last, self._max_events)
        if count <= 0:
            return []
        key = self._episode_key(episode_id) + ":events"
        raw = await self._call(lambda: self._r.lrange(key, -count, -1))
        return [orjson.loads(item) for item in raw]

    async def ping(self) -> bool:
        try:
            return bool(await self._r.ping())
        except (RedisError, OSError):
            return False

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(f"the registry's Redis is unreachable: {exc}") from exc


def redis_client(url: str, *, socket_timeout_s: float = 1.0) -> aioredis.Redis:
    """The services' Redis client: short timeouts, so a dead Redis fails fast, not slowly.

    A command that meets a connection error is retried once on a fresh connection: after a
    Redis restart every pooled connection is stale, and without the retry the first command on
    each failed (the cache bypassed, a registry write answered 503) although Redis was back.
    A timeout is not retried (a slow Redis stays a fast failure)."""
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=0.5,
        socket_timeout=socket_timeout_s,
        health_check_interval=10,
        retry=Retry(NoBackoff(), retries=1),
        retry_on_error=[RedisConnectionError],
        retry_on_timeout=False,
    )
