"""The Redis cache and registry against a real redis-server, including a restart.

Every app here runs without its near-caches (``near_cache_max_bytes=0``), so that each call
reaches Redis: ``test_near_cache.py`` tests them in front of it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from tests.conftest import WEATHER_OUTPUT, WEATHER_TOOL, RedisServer, start_app, tool_call
from tests.doubles import ScriptedBackend

pytestmark = pytest.mark.redis

CALL = {
    "tools": [WEATHER_TOOL],
    "output_schemas": {"get_weather": WEATHER_OUTPUT},
    "tool_calls": [tool_call("get_weather", '{"city": "Oslo"}')],
}


async def test_observations_and_toolsets_are_shared_across_instances(
    redis_server: RedisServer,
) -> None:
    first_backend, second_backend = ScriptedBackend(), ScriptedBackend()
    _, a, a_life = await start_app(
        first_backend, redis_url=redis_server.url, near_cache_max_bytes=0
    )
    _, b, b_life = await start_app(
        second_backend, redis_url=redis_server.url, near_cache_max_bytes=0
    )
    try:
        ra = await a.post("/v1/tool_calls", json=CALL)
        rb = await b.post("/v1/tool_calls", json=CALL)
        assert rb.json()["observations"][0]["source"] == "cache"
        assert ra.json()["messages"] == rb.json()["messages"]
        assert len(first_backend.calls) == 1 and second_backend.calls == []
        ts = (await a.post("/v1/toolsets", json={"tools": [WEATHER_TOOL]})).json()
        got = await b.get(f"/v1/toolsets/{ts['id']}")
        assert got.status_code == 200 and got.json()["tools"] == ts["tools"]
        episode = (await a.post("/v1/episodes", json={"toolset_id": ts["id"], "seed": 5})).json()
        r = await b.post(
            f"/v1/toolsets/{ts['id']}/tools/get_weather",
            json={"city": "Bergen"},
            headers={"X-Episode-Id": episode["episode_id"]},
        )
        assert r.status_code == 200
        events = (await a.get(f"/v1/episodes/{episode['episode_id']}")).json()["events"]
        assert [e["arguments"] for e in events] == [{"city": "Bergen"}]
    finally:
        for client, life in ((a, a_life), (b, b_life)):
            await client.aclose()
            await life.__aexit__(None, None, None)


async def test_other_sampling_settings_do_not_replay_the_cache(
    redis_server: RedisServer,
) -> None:
    """The same call on a replica with another presence penalty or temperature is generated
    anew: the cached observation came from other sampling settings."""
    backends = [ScriptedBackend() for _ in range(4)]
    settings = [
        {},
        {"presence_penalty": 0.0},
        {"temperature": 0.2},
        {},  # the first one's settings again: replayed
    ]
    started = [
        await start_app(b, redis_url=redis_server.url, near_cache_max_bytes=0, **s)
        for b, s in zip(backends, settings, strict=True)
    ]
    try:
        sources = []
        for _, client, _ in started:
            r = await client.post("/v1/tool_calls", json=CALL)
            assert r.status_code == 200
            sources.append(r.json()["observations"][0]["source"])
        assert sources == ["simulated", "simulated", "simulated", "cache"]
        assert [len(b.calls) for b in backends] == [1, 1, 1, 0]
    finally:
        for _, client, life in started:
            await client.aclose()
            await life.__aexit__(None, None, None)


async def test_cache_survives_a_service_restart(redis_server: RedisServer) -> None:
    backend = ScriptedBackend()
    _, client, life = await start_app(backend, redis_url=redis_server.url, near_cache_max_bytes=0)
    first = (await client.post("/v1/tool_calls", json=CALL)).json()
    await client.aclose()
    await life.__aexit__(None, None, None)
    _, client, life = await start_app(
        ScriptedBackend(), redis_url=redis_server.url, near_cache_max_bytes=0
    )
    try:
        again = (await client.post("/v1/tool_calls", json=CALL)).json()
        assert again["observations"][0]["source"] == "cache"
        assert again["messages"] == first["messages"]
    finally:
        await client.aclose()
        await life.__aexit__(None, None, None)


async def test_redis_down_degrades_then_recovers(redis_server: RedisServer) -> None:
    backend = ScriptedBackend()
    _, client, life = await start_app(backend, redis_url=redis_server.url, near_cache_max_bytes=0)
    try:
        assert (await client.post("/v1/tool_calls", json=CALL)).status_code == 200
        redis_server.stop()
        other = {**CALL, "tool_calls": [tool_call("get_weather", '{"city": "Lima"}')]}
        loop = asyncio.get_running_loop()
        started = loop.time()
        r = await client.post("/v1/tool_calls", json=other)
        assert r.status_code == 200, r.text  # still answering, cache bypassed
        assert r.json()["observations"][0]["source"] == "simulated"
        assert loop.time() - started < 3
        ready = await client.get("/ready")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert ready.json()["cache"] == "degraded"
        metrics = (await client.get("/metrics")).text
        assert "toolsim_cache_errors_total 0.0" not in metrics
        assert "toolsim_cache_degraded 1.0" in metrics

        redis_server.start()  # same port, AOF on: the first observation is still there
        for _ in range(50):
            ready = await client.get("/ready")
            if ready.json()["status"] == "ready":
                break
            await asyncio.sleep(0.1)
        assert ready.json()["status"] == "ready"
        r = await client.post("/v1/tool_calls", json=other)
        assert r.json()["observations"][0]["source"] == "simulated"  # not cached while down
        r = await client.post("/v1/tool_calls", json=other)
        assert r.json()["observations"][0]["source"] == "cache"  # written again after recovery
        assert "toolsim_cache_degraded 0.0" in (await client.get("/metrics")).text
    finally:
        await client.aclose()
        await life.__aexit__(None, None, None)


async def test_first_request_after_a_redis_restart_reads_the_cache(
    redis_server: RedisServer,
) -> None:
    """A restart between two requests leaves the pool's connections stale: the first command
    on one fails. It is retried once on a fresh connection, so the cached observation is
    served instead of the cache being bypassed (seen through `docker compose kill redis`)."""
    backend = ScriptedBackend()
    _, client, life = await start_app(backend, redis_url=redis_server.url, near_cache_max_bytes=0)
    try:
        first = (await client.post("/v1/tool_calls", json=CALL)).json()
        assert first["observations"][0]["source"] == "simulated"
        redis_server.stop()
        redis_server.start()  # same port, AOF on
        again = await client.post("/v1/tool_calls", json=CALL)
        assert again.status_code == 200, again.text
        assert again.json()["observations"][0]["source"] == "cache", again.json()
        assert again.json()["messages"] == first["messages"]
        registered = await client.post("/v1/toolsets", json={"tools": CALL["tools"]})
        assert registered.status_code == 201, registered.text  # the registry's pool too
    finally:
        await client.aclose()
        await life.__aexit__(None, None, None)


async def test_the_cache_redis_evicts_observations_while_the_registry_keeps_toolsets(
    tmp_path: Path,
) -> None:
    """Key classes: with ``cache_redis_url`` the observations live on a Redis of their own,
    which may evict them under ``maxmemory`` (``allkeys-lru``), while toolsets and episodes
    stay on the registry's Redis, which never evicts (``noeviction``), as ``k8s/redis.yaml``
    runs them."""
    (tmp_path / "registry").mkdir()
    (tmp_path / "cache").mkdir()
    registry_redis, cache_redis = (
        RedisServer(tmp_path / "registry"),
        RedisServer(tmp_path / "cache"),
    )
    registry_redis.start()
    cache_redis.start()
    raw_registry = aioredis.Redis.from_url(registry_redis.url)
    raw_cache = aioredis.Redis.from_url(cache_redis.url)
    backend = ScriptedBackend()
    _, client, life = await start_app(
        backend, redis_url=registry_redis.url, cache_redis_url=cache_redis.url
    )
    try:
        await raw_registry.config_set("maxmemory-policy", "noeviction")
        await raw_cache.config_set("maxmemory", "4mb")
        await raw_cache.config_set("maxmemory-policy", "allkeys-lru")
        ts = (await client.post("/v1/toolsets", json={"tools": [WEATHER_TOOL]})).json()
        call = {
            "toolset_id": ts["id"],
            "tool_calls": [tool_call("get_weather", '{"city": "Oslo"}')],
        }
        first = (await client.post("/v1/tool_calls", json=call)).json()
        assert first["observations"][0]["source"] == "simulated"
        # each key class on its own Redis
        assert await raw_cache.keys("toolsim:toolset*") == []
        assert await raw_registry.keys("toolsim:obs:*") == []
        observations = await raw_cache.keys("toolsim:obs:*")  # + the schema inference memo
        assert len([k for k in observations if not k.startswith(b"toolsim:obs:schema:")]) == 1
        assert await raw_registry.exists(f"toolsim:toolset:{ts['id']}") == 1
        # memory pressure on the cache: 12 MB of other observations into a 4 MB Redis
        filler = b"x" * 100_000
        for n in range(120):
            await raw_cache.set(f"toolsim:obs:filler{n}", filler)
        info = await raw_cache.info("stats")
        assert int(info["evicted_keys"]) > 0
        assert await raw_cache.dbsize() < 120
        # the toolset is untouched, and the service still answers (a miss is regenerated)
        kept = await client.get(f"/v1/toolsets/{ts['id']}")
        assert kept.status_code == 200 and kept.json()["tools"] == ts["tools"]
        again = await client.post("/v1/tool_calls", json=call)
        assert again.status_code == 200
        assert again.json()["observations"][0]["source"] in {"cache", "simulated"}
    finally:
        await client.aclose()
        await life.__aexit__(None, None, None)
        await raw_registry.aclose()
        await raw_cache.aclose()
        registry_redis.stop()
        cache_redis.stop()


async def test_identical_concurrent_calls_over_two_replicas_cost_one_generation(
    redis_server: RedisServer,
) -> None:
    backends = [ScriptedBackend(delay_s=0.5), ScriptedBackend(delay_s=0.5)]
    started = [
        await start_app(b, redis_url=redis_server.url, near_cache_max_bytes=0) for b in backends
    ]
    try:
        clients = [client for _, client, _ in started]
        answers = await asyncio.gather(
            *(clients[n % 2].post("/v1/tool_calls", json=CALL) for n in range(8))
        )
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        assert sum(len(b.calls) for b in backends) == 1
        assert len({orjson.dumps(a.json()["messages"]) for a in answers}) == 1
        sources = sorted(a.json()["observations"][0]["source"] for a in answers)
        assert sources == ["cache"] * 7 + ["simulated"]
        waiter = clients[0] if backends[1].calls else clients[1]
        metrics = (await waiter.get("/metrics")).text
        assert "toolsim_coalesced_replica_calls_total 1.0" in metrics, metrics
        assert await aioredis.Redis.from_url(redis_server.url).keys("toolsim:claim:*") == []
    finally:
        for _, client, life in started:
            await client.aclose()
            await life.__aexit__(None, None, None)


async def test_a_claim_left_by_a_dead_replica_expires_and_the_call_is_generated(
    redis_server: RedisServer,
) -> None:
    """A replica that dies mid-generation never releases its claim: the claim's expiry does,
    and a waiting replica then generates the observation itself."""
    raw = aioredis.Redis.from_url(redis_server.url)
    failing, healthy = ScriptedBackend(delay_s=0.3), ScriptedBackend()
    failing.unavailable = True
    _, a, a_life = await start_app(failing, redis_url=redis_server.url, near_cache_max_bytes=0)
    _, b, b_life = await start_app(healthy, redis_url=redis_server.url, near_cache_max_bytes=0)
    try:
        pending = asyncio.ensure_future(a.post("/v1/tool_calls", json=CALL))
        claims: list[bytes] = []
        while not claims and not pending.done():
            claims = await raw.keys("toolsim:claim:*")
            await asyncio.sleep(0.02)
        assert (await pending).status_code == 503  # failed: nothing stored
        assert len(claims) == 1, "replica A held no claim while generating"
        # what a replica killed at that moment leaves behind: its claim, never released
        await raw.set(claims[0], b"token-of-a-dead-replica", px=1500)
        began = asyncio.get_running_loop().time()
        answer = await b.post("/v1/tool_calls", json=CALL)
        waited = asyncio.get_running_loop().time() - began
        assert answer.status_code == 200, answer.text
        assert answer.json()["observations"][0]["source"] == "simulated"
        assert len(healthy.calls) == 1
        assert 1.0 < waited < 5.0, waited
    finally:
        for client, life in ((a, a_life), (b, b_life)):
            await client.aclose()
            await life.__aexit__(None, None, None)
        await raw.aclose()
