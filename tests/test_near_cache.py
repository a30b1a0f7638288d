"""The ToolActor's in-process near-caches: whole responses replayed on every face, and
observations kept in front of Redis (``replay.py``, ``cache/near.py``).

A replayed response must be exactly what the service would answer again, and only such
responses are kept: never an episode call, a fault-policy toolset's, a flagged observation or
one just generated. A replay is seen by the service not being asked at all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import WEATHER_OUTPUT, WEATHER_TOOL, RedisServer, start_app, tool_call
from tests.doubles import ScriptedBackend
from toolsim_toolactor.cache import MemoryCache, NearCache

MCP_HEADERS = {"accept": "application/json, text/event-stream"}
OSLO = '{"city": "Oslo"}'


class Actor:
    def __init__(self, app: Any, http: httpx.AsyncClient, backend: ScriptedBackend) -> None:
        self.app, self.http, self.backend = app, http, backend

        self.asked = 0
        """Calls that reached the service (after ``count_service``): a replay does not."""

    def count_service(self) -> None:
        service = self.app.state.actor.service
        for name in ("tool_calls", "call_tool"):
            method = getattr(service, name)

            async def counted(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
                self.asked += 1
                return await _method(*args, **kwargs)

            setattr(service, name, counted)


async def started(**settings: Any) -> tuple[Actor, Any]:
    backend = ScriptedBackend()
    app, client, life = await start_app(backend, **settings)
    return Actor(app, client, backend), life


@pytest.fixture
async def actor() -> AsyncIterator[Actor]:
    a, life = await started()
    try:
        yield a
    finally:
        await a.http.aclose()
        await life.__aexit__(None, None, None)


async def toolset(actor: Actor, **extra: Any) -> str:
    body = {"tools": [WEATHER_TOOL], "output_schemas": {"get_weather": WEATHER_OUTPUT}, **extra}
    r = await actor.http.post("/v1/toolsets", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def mcp_call(request_id: int, city: str = "Oslo") -> dict[str, Any]:
    params = {"name": "get_weather", "arguments": {"city": city}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


async def test_tool_calls_replays_a_cache_hit_with_new_latency(actor: Actor) -> None:
    body = {
        "tools": [WEATHER_TOOL],
        "output_schemas": {"get_weather": WEATHER_OUTPUT},
        "tool_calls": [tool_call("get_weather", OSLO, "a"), tool_call("get_weather", OSLO, "b")],
    }
    first = (await actor.http.post("/v1/tool_calls", json=body)).json()
    assert first["observations"][0]["source"] == "simulated"
    second = (await actor.http.post("/v1/tool_calls", json=body)).json()
    assert [o["source"] for o in second["observations"]] == ["cache", "cache"]
    hits_before = actor.app.state.actor.metrics.cache_hits._value.get()
    actor.count_service()
    third = await actor.http.post("/v1/tool_calls", json=body)
    assert actor.asked == 0
    assert third.status_code == 200, third.text
    assert third.json()["messages"] == first["messages"]
    assert [o["tool_call_id"] for o in third.json()["observations"]] == ["a", "b"]
    assert {o["source"] for o in third.json()["observations"]} == {"cache"}
    assert actor.app.state.actor.metrics.cache_hits._value.get() == hits_before + 2
    # another call id is another request: not replayed (the service refuses)
    other = {**body, "tool_calls": [tool_call("get_weather", OSLO, "c")]}
    assert (await actor.http.post("/v1/tool_calls", json=other)).status_code == 200
    assert actor.asked == 1


async def test_rest_and_mcp_replay_only_after_a_hit(actor: Actor) -> None:
    ts = await toolset(actor)
    rest = f"/v1/toolsets/{ts}/tools/get_weather"
    answers = [await actor.http.post(rest, json={"city": "Oslo"}) for _ in range(2)]
    assert [r.headers["x-toolsim-source"] for r in answers] == ["simulated", "cache"]
    mcp = f"/v1/toolsets/{ts}/mcp"
    first = await actor.http.post(mcp, json=mcp_call(1), headers=MCP_HEADERS)
    assert first.status_code == 200, first.text
    assert "_meta" not in first.json()["result"]  # a plain hit (REST filled the cache)
    generations = len(actor.backend.calls)
    actor.count_service()

    again = await actor.http.post(rest, json={"city": "Oslo"})
    assert again.status_code == 200
    assert again.content == answers[1].content
    assert again.headers["x-toolsim-source"] == "cache"
    assert again.headers["content-type"] == answers[1].headers["content-type"]
    replayed = await actor.http.post(mcp, json=mcp_call(7), headers=MCP_HEADERS)
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["id"] == 7  # the caller's id, not the kept one
    assert replayed.json()["result"] == first.json()["result"]
    assert actor.asked == 0
    assert len(actor.backend.calls) == generations

    # what the MCP transport checks is part of the key: a bad Accept reaches it and fails
    refused = await actor.http.post(mcp, json=mcp_call(8), headers={"accept": "text/html"})
    assert refused.status_code == 406
    # another seed is another request
    assert (await actor.http.post(rest + "?seed=3", json={"city": "Oslo"})).status_code == 200
    assert actor.asked == 1


async def test_episode_calls_are_never_replayed(actor: Actor) -> None:
    ts = await toolset(actor)
    episode = (await actor.http.post("/v1/episodes", json={"toolset_id": ts})).json()["episode_id"]
    body = {"toolset_id": ts, "episode_id": episode, "tool_calls": [tool_call("get_weather", OSLO)]}
    rest = f"/v1/toolsets/{ts}/tools/get_weather"
    for _ in range(3):
        assert (await actor.http.post("/v1/tool_calls", json=body)).status_code == 200
        r = await actor.http.post(rest, json={"city": "Oslo"}, headers={"x-episode-id": episode})
        assert r.status_code == 200
    events = (await actor.http.get(f"/v1/episodes/{episode}")).json()["events"]
    assert len(events) == 6  # every call recorded in the episode: none answered from memory


async def test_fault_policies_and_flagged_observations_are_never_replayed(actor: Actor) -> None:
    # a policy that draws no fault for this call still draws (and may delay) every time
    faulty = await toolset(actor, faults={"seed": 1, "rates": {}})
    body = {"toolset_id": faulty, "tool_calls": [tool_call("get_weather", OSLO)]}
    sources = [
        (await actor.http.post("/v1/tool_calls", json=body)).json()["observations"][0]["source"]
        for _ in range(3)
    ]
    assert sources == ["simulated", "cache", "cache"]
    assert len(actor.app.state.actor.responses) == 0

    plain = await toolset(actor)
    flagged = {"toolset_id": plain, "tool_calls": [tool_call("get_weather", '{"city": "Rome"}')]}
    actor.backend.bad_outputs = ['{"city": "Rome", "temperature": 1, "conditions": ""}'] * 9
    for _ in range(2):
        r = (await actor.http.post("/v1/tool_calls", json=flagged)).json()
        assert r["observations"][0].get("flags"), r  # returned flagged, replayed flagged
    assert len(actor.app.state.actor.responses) == 0


async def test_a_kept_response_still_needs_a_key_and_charges_one_token() -> None:
    keys = "sk-alpha-0123456789"
    actor, life = await started(api_keys=keys, rate_limit_rps=0.001, rate_limit_burst=3)
    good = {"authorization": f"Bearer {keys}"}
    try:
        r = await actor.http.post("/v1/toolsets", json={"tools": [WEATHER_TOOL]}, headers=good)
        ts = r.json()["id"]  # one token
        rest = f"/v1/toolsets/{ts}/tools/get_weather"
        assert (await actor.http.post(rest, json={"city": "Oslo"}, headers=good)).status_code == 200
        assert (await actor.http.post(rest, json={"city": "Oslo"})).status_code == 401
        # one token per request, checked by the front only: the third request is the last
        assert (await actor.http.post(rest, json={"city": "Oslo"}, headers=good)).status_code == 200
        limited = await actor.http.post(rest, json={"city": "Oslo"}, headers=good)
        assert limited.status_code == 429 and limited.headers["retry-after"]
    finally:
        await actor.http.aclose()
        await life.__aexit__(None, None, None)


async def test_replayed_entries_expire() -> None:
    actor, life = await started(near_cache_ttl_s=0.2)
    try:
        ts = await toolset(actor)
        rest = f"/v1/toolsets/{ts}/tools/get_weather"
        for _ in range(2):
            await actor.http.post(rest, json={"city": "Oslo"})
        assert len(actor.app.state.actor.responses) == 1
        await asyncio.sleep(0.3)
        assert len(actor.app.state.actor.responses) == 0
    finally:
        await actor.http.aclose()
        await life.__aexit__(None, None, None)


async def test_the_near_cache_can_be_turned_off() -> None:
    actor, life = await started(near_cache_max_bytes=0)
    try:
        assert actor.app.state.actor.responses is None
        body = {"tools": [WEATHER_TOOL], "tool_calls": [tool_call("get_weather", OSLO)]}
        for _ in range(2):
            await actor.http.post("/v1/tool_calls", json=body)
        actor.count_service()
        again = await actor.http.post("/v1/tool_calls", json=body)
        assert again.json()["observations"][0]["source"] == "cache"
        assert actor.asked == 1
    finally:
        await actor.http.aclose()
        await life.__aexit__(None, None, None)


async def test_observations_are_kept_in_front_of_redis(redis_server: RedisServer) -> None:
    """An episode call (never replayed whole) reads its observation from process memory once
    it has been generated here: deleted from Redis, it is still a hit on this replica, and a
    replica without the near tier generates it again."""
    with_near, life = await started(redis_url=redis_server.url)
    without, life_off = await started(redis_url=redis_server.url, near_cache_max_bytes=0)
    assert isinstance(with_near.app.state.actor.cache, NearCache)
    try:
        for actor in (with_near, without):
            ts = await toolset(actor)
            ep = (await actor.http.post("/v1/episodes", json={"toolset_id": ts, "seed": 4})).json()
            call = tool_call("get_weather", OSLO)
            body = {"toolset_id": ts, "episode_id": ep["episode_id"], "tool_calls": [call]}
            first = (await actor.http.post("/v1/tool_calls", json=body)).json()
            assert first["observations"][0]["source"] == "simulated"
            store = redis.Redis.from_url(redis_server.url)
            removed = [store.delete(k) for k in store.scan_iter("toolsim:obs:*")]
            assert removed, "the observation was written to Redis"
            again = (await actor.http.post("/v1/tool_calls", json=body)).json()
            expected = "cache" if actor is with_near else "simulated"
            assert again["observations"][0]["source"] == expected
            assert again["messages"] == first["messages"]
    finally:
        for actor, lifespan in ((with_near, life), (without, life_off)):
            await actor.http.aclose()
            await lifespan.__aexit__(None, None, None)


async def test_near_cache_is_bounded_by_bytes() -> None:
    near = NearCache(MemoryCache(), max_bytes=100, ttl_s=60)
    await near.set("a", b"x" * 60)
    await near.set("b", b"y" * 60)  # over the bound: the older one goes
    await near.set("c", b"z" * 500)  # larger than the bound: shared only
    assert len(near) == 1
    assert await near.get("b") == b"y" * 60
    assert await near.get("c") == b"z" * 500  # from the shared tier
    assert len(near) == 1
