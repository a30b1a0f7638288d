"""Whole responses replayed from process memory: the cheapest cache hit of all.

A call whose every observation was a cache hit outside any episode, on a toolset without a
fault policy, would get the same response again (the cache key is a digest of everything that
determines the observation, and a toolset never changes under its id). Such a response is
kept in a bounded in-process cache, keyed by what the request says: on ``/v1/tool_calls`` the
body's bytes; on the REST tool endpoint the path, the query and the body; on MCP the path,
the headers the MCP transport checks and the JSON-RPC message without its ``id``. A repeated
request is answered before any parsing, validation, routing or MCP session: on the REST and
MCP faces by ``ReplayFront``, which ``ToolActorApp`` puts in front of FastAPI.

The service says what may be kept (``Observation.replayable``), through the
``Replayability`` each request carries in its scope; nothing else is ever stored. An
episode call never is (its history must be recorded), nor a live, flagged, faulted or
freshly generated observation.
Entries are bounded by total bytes and by age (``near_cache_ttl_s``), the age bound only
limiting how long an operator's flush of the shared cache takes to reach every replica.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from cachetools import TTLCache
from starlette.types import Message, Receive, Scope, Send

from toolsim.access import ADMITTED, Guard, send_error
from toolsim.errors import ToolsimError
from toolsim.http import receive_body
from toolsim_toolactor.metrics import ActorMetrics

SCOPE_KEY = "toolsim.replay"
"""Where a request's ``Replayability`` travels in its ASGI scope (middleware may copy the scope;
the replayability object is shared)."""
REST_ROUTE = "/v1/toolsets/{toolset_id}/tools/{name}"
MCP_ROUTE = "/v1/toolsets/{toolset_id}/mcp"
MAX_KEPT_BODY = 65_536
"""Requests with larger bodies are never kept (their key alone would crowd the cache)."""
_MCP_HEADERS = (b"accept", b"content-type", b"mcp-protocol-version")


@dataclass
class Replayability:
    """Whether the response to one request may be replayed; the service's word on it."""

    replayable: bool = False


@dataclass(frozen=True)
class Kept:
    """A response kept for replay: its headers, its body (MCP: the JSON-RPC ``result``), and
    how many observations it carries (for the cache-hit counters)."""

    headers: list[tuple[bytes, bytes]]
    body: bytes
    observations: int = 1
    call_ids: list[str] = field(default_factory=list)


class ResponseCache:
    """Bounded by the bytes of keys and bodies together, and by age."""

    def __init__(self, *, max_bytes: int, ttl_s: float) -> None:
        self._kept: TTLCache[Any, Kept] = TTLCache(maxsize=max_bytes, ttl=ttl_s, getsizeof=_size_of)

    def get(self, key: Any) -> Kept | None:
        return self._kept.get(key)

    def put(self, key: Any, kept: Kept) -> None:
        if _size_of(kept) <= self._kept.maxsize:
            self._kept[key] = kept

    def __len__(self) -> int:
        return len(self._kept)


def _size_of(kept: Kept) -> int:
    return len(kept.body) + sum(len(k) + len(v) for k, v in kept.headers) + 64


def replayability_of(scope: Scope) -> Replayability | None:
    """The request's replayability, for the handler to set (None when no front is listening)."""
    replayability: Replayability | None = scope.get(SCOPE_KEY)
    return replayability


def face_of(scope: Scope) -> str | None:
    """``"rest"`` or ``"mcp"`` for a POST to those faces outside any episode, else None."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    parts = scope["path"].split("/")  # "", "v1", "toolsets", id, "tools", name | "mcp" [, ""]
    if len(parts) < 5 or parts[1] != "v1" or parts[2] != "toolsets":
        return None
    if any(name == b"x-episode-id" for name, _ in scope["headers"]):
        return None
    if len(parts) == 6 and parts[4] == "tools":
        return "rest"
    if parts[4] == "mcp" and (len(parts) == 5 or (len(parts) == 6 and parts[5] == "")):
        return "mcp"
    return None


class ReplayFront:
    """In front of FastAPI for the REST and MCP faces: answers a kept response, or passes the
    request on (its body already read) and keeps the response the service marked replayable."""

    def __init__(
        self, cache: ResponseCache, guard: Guard | None, metrics: ActorMetrics, limit: int
    ) -> None:
        self._cache = cache
        self._guard = guard
        self._metrics = metrics
        self._limit = limit

    async def __call__(
        self,
        face: str,
        scope: Scope,
        receive: Receive,
        send: Send,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
    ) -> None:
        started = time.perf_counter()
        if self._guard is not None:
            refused = await self._guard.admit(scope)
            if refused is not None:
                await send_error(send, refused)
                return
            scope[ADMITTED] = True
        try:
            raw = await receive_body(scope, receive, self._limit)
        except ToolsimError as exc:
            await send_error(send, exc)
            return
        key, request_id = _key(face, scope, raw)
        kept = self._cache.get(key) if key is not None else None
        if kept is not None:
            body = kept.body if face == "rest" else _jsonrpc(request_id, kept.body)
            await _send(send, 200, kept.headers, body)
            self._metrics.cache_hits.inc()
            self._metrics.cache_observations.inc()
            route = REST_ROUTE if face == "rest" else MCP_ROUTE
            self._metrics.observe_request(route, 200, time.perf_counter() - started)
            return
        replayability = Replayability()
        scope[SCOPE_KEY] = replayability
        response = _Recorder(send)
        await app(scope, _replaying(raw, receive), response)
        if key is not None and replayability.replayable and response.status == 200:
            kept_body = response.body() if face == "rest" else _result_of(response.body())
            if kept_body is not None:
                self._cache.put(key, Kept(response.headers, kept_body))


def _key(face: str, scope: Scope, raw: bytes) -> tuple[Any, Any]:
    """The cache key of a request (None: never kept) and, on MCP, its JSON-RPC id."""
    if len(raw) > MAX_KEPT_BODY:
        return None, None
    if face == "rest":
        return (scope["path"], scope["query_string"], raw), None
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(message, dict) or message.get("method") != "tools/call":
        return None, None
    request_id = message.pop("id", None)
    if request_id is None:  # a notification: no response to replay
        return None, None
    headers = tuple(v for name, v in scope["headers"] if name in _MCP_HEADERS)
    return (scope["path"], scope["query_string"], headers, orjson.dumps(message)), request_id


def _jsonrpc(request_id: Any, result: bytes) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "result": orjson.Fragment(result)})


def _result_of(body: bytes) -> bytes | None:
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict) or "result" not in message:
        return None
    return orjson.dumps(message["result"])


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _replaying(raw: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then the client's messages."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return replay


class _Recorder:
    """A ``send`` that passes every message on and remembers the response."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = [(k, v) for k, v in message["headers"] if k != b"content-length"]
        elif message["type"] == "http.response.body":
            self._chunks.append(message.get("body", b""))
        await self._send(message)

    def body(self) -> bytes:
        return b"".join(self._chunks)
