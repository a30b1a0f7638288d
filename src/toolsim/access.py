"""Who may call the services: inbound API keys and a token bucket per key.

With ``TOOLSIM_API_KEYS`` unset nothing here runs at all (the app gets no middleware and the
hot path no check): the services are open, as a local tool server usually is. With keys set,
every request but the probes (``/health``, ``/ready``, ``/metrics``: kubelets and Prometheus
carry no secret, and none of them returns caller data) must carry ``Authorization: Bearer
KEY``, which is what the official ``openai`` SDK sends for its ``api_key`` and what MCP clients
send. Keys are held as SHA-256 digests and looked up by digest, so a key never appears in a
log line, a metric label or a Redis key: a bucket is named by a short digest.

``TOOLSIM_RATE_LIMIT_RPS`` adds a token bucket per key: ``burst`` requests at once, refilled
at ``rps``. With Redis configured the bucket lives there (one Lua script, the server's clock),
so every replica draws from the same bucket; if Redis fails, each replica falls back to its
own bucket (counted and logged) rather than refusing every caller.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterable

import orjson
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Receive, Scope, Send

from toolsim.config import CommonSettings
from toolsim.errors import AuthenticationError, RateLimitExceededError, ToolsimError
from toolsim.registry import redis_client

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})
ADMITTED = "toolsim.admitted"
"""Set in a request's ASGI scope by a front that admitted it, so ``AccessControl`` does not
check (and charge its bucket) twice."""
"""Answered without a key: probes and scrapes."""

_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 't', 'v')
local last = tonumber(state[1]) or now
local tokens = math.min(burst, (tonumber(state[2]) or burst) + math.max(0, now - last) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 't', tostring(now), 'v', tostring(tokens))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""
"""Take one token from the bucket at KEYS[1]; returns the seconds to wait (0: taken)."""


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class LocalBuckets:
    """Token buckets in this process: the fallback, and the store without Redis."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = burst
        self._state: dict[str, tuple[float, float]] = {}

    async def take(self, bucket: str) -> float:
        now = time.monotonic()
        last, tokens = self._state.get(bucket, (now, float(self._burst)))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self._rate
        self._state[bucket] = (now, tokens)
        return wait


class RedisBuckets:
    """The same buckets in Redis, shared by every replica; local ones while Redis fails."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        rate: float,
        burst: int,
        on_error: Counter,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._args = (repr(rate), str(burst))
        self._script = client.register_script(_BUCKET_LUA)
        self._local = LocalBuckets(rate, burst)
        self._on_error = on_error
        self._failing = False

    async def take(self, bucket: str) -> float:
        try:
            key = f"{self._prefix}ratelimit:{bucket}"
            wait = float(await self._script(keys=[key], args=self._args))
        except RedisError as exc:
            self._on_error.inc()
            if not self._failing:  # one line per outage, not one per request
                log.warning("rate limits fall back to this replica's buckets: %r", exc)
                self._failing = True
            return await self._local.take(bucket)
        if self._failing:
            log.info("rate limits are shared through Redis again")
            self._failing = False
        return wait

    async def aclose(self) -> None:
        await self._client.aclose()


class Guard:
    """Decides whether one request may go on: a known key, and a token in its bucket."""

    def __init__(
        self,
        keys: Iterable[str],
        *,
        buckets: LocalBuckets | RedisBuckets | None,
        rejections: Counter,
        rate: float | None = None,
        burst: int | None = None,
    ) -> None:
        # digest -> bucket name (a short digest of the digest: nothing that leads back to it)
        self._keys = {_digest(k.encode()): _digest(_digest(k.encode())).hex()[:16] for k in keys}
        self._seen: dict[bytes, str] = {}
        """Tokens already found valid -> bucket: a repeat skips the digest (bounded by the
        number of keys, since only valid tokens enter)."""
        self._buckets = buckets
        self._rejections = rejections
        self._rate = rate
        self._burst = burst

    async def admit(self, scope: Scope) -> ToolsimError | None:
        """None when the request may go on, else the error to answer with."""
        token = _bearer(scope)
        if token is None:
            self._rejections.labels("missing").inc()
            return AuthenticationError(
                "missing API key: send it as 'Authorization: Bearer KEY' "
                "(the openai SDK's api_key does)"
            )
        bucket = self._seen.get(token)
        if bucket is None:
            bucket = self._keys.get(_digest(token))
            if bucket is None:
                self._rejections.labels("invalid").inc()
                return AuthenticationError("invalid API key")
            self._seen[token] = bucket
        if self._buckets is None:
            return None
        wait = await self._buckets.take(bucket)
        if wait <= 0:
            return None
        self._rejections.labels("rate_limited").inc()
        return RateLimitExceededError(
            f"rate limit exceeded for this API key ({self._rate:g} requests/s, burst "
            f"{self._burst}): retry after {wait:.1f} s",
            retry_after_s=max(1, math.ceil(wait)),
        )

    async def aclose(self) -> None:
        if isinstance(self._buckets, RedisBuckets):
            await self._buckets.aclose()


def build_guard(settings: CommonSettings, registry: CollectorRegistry) -> Guard | None:
    """The guard the settings ask for, its counters in ``registry``; None when keys are unset."""
    if settings.api_keys is None:
        return None
    keys = [k.strip() for k in settings.api_keys.get_secret_value().split(",") if k.strip()]
    rejections = Counter(
        "toolsim_auth_rejections",
        "Requests refused by access control, by reason (missing, invalid, rate_limited).",
        ["reason"],
        registry=registry,
    )
    rate = settings.rate_limit_rps
    if rate is None:
        return Guard(keys, buckets=None, rejections=rejections)
    burst = settings.rate_limit_burst or max(1, math.ceil(rate))
    buckets: LocalBuckets | RedisBuckets = LocalBuckets(rate, burst)
    if settings.redis_url is not None:
        errors = Counter(
            "toolsim_rate_limit_store_errors",
            "Rate-limit checks that fell back to this replica's buckets because Redis failed.",
            registry=registry,
        )
        client = redis_client(settings.redis_url)
        buckets = RedisBuckets(
            client, prefix=settings.redis_prefix, rate=rate, burst=burst, on_error=errors
        )
    return Guard(keys, buckets=buckets, rejections=rejections, rate=rate, burst=burst)


def _bearer(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return bytes(token.strip())
            return None
    return None


async def send_error(send: Send, error: ToolsimError) -> None:
    """Answer with ``error`` in the OpenAI envelope (a plain ASGI response: no app involved)."""
    body = orjson.dumps(error.to_envelope())
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AccessControl:
    """ASGI middleware: every HTTP request but ``OPEN_PATHS`` passes ``guard`` first (the
    ToolActor's fast path checks its own requests: they never reach this middleware)."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] not in OPEN_PATHS
            and not scope.get(ADMITTED)  # a front in the same app checked it already
        ):
            error = await self.guard.admit(scope)
            if error is not None:
                await send_error(send, error)
                return
        await self.app(scope, receive, send)
