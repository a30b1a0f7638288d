"""The registries stay bounded: events per episode, episodes and toolsets in memory."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from tests.conftest import WEATHER_TOOL, RedisServer, start_app, tool_call
from tests.doubles import ScriptedBackend
from toolsim.errors import RegistryFullError
from toolsim.registry.memory import MemoryRegistry
from toolsim.registry.redis import RedisRegistry, redis_client


def event(n: int) -> dict[str, int]:
    return {"n": n}


async def test_memory_registry_keeps_the_newest_events_and_reads_the_last_ones() -> None:
    registry = MemoryRegistry(max_events=5)
    await registry.create_episode("e", {"toolset_id": "t"})
    await registry.append_events("e", [event(n) for n in range(4)])
    await registry.append_events("e", [event(n) for n in range(4, 12)])
    assert [e["n"] for e in await registry.episode_events("e")] == [7, 8, 9, 10, 11]
    assert [e["n"] for e in await registry.episode_events("e", last=2)] == [10, 11]
    assert await registry.episode_events("e", last=0) == []
    assert [e["n"] for e in await registry.episode_events("e", last=50)] == [7, 8, 9, 10, 11]


async def test_memory_registry_drops_the_oldest_episodes_with_their_events() -> None:
    registry = MemoryRegistry(max_episodes=2)
    for name in ("a", "b", "c"):
        await registry.create_episode(name, {"name": name})
        await registry.append_events(name, [event(1)])
    assert await registry.get_episode("a") is None
    assert await registry.episode_events("a") == []
    assert await registry.get_episode("b") == {"name": "b"}
    assert await registry.get_episode("c") == {"name": "c"}
    assert len(await registry.episode_events("c")) == 1


async def test_memory_registry_refuses_toolsets_past_its_cap_and_never_evicts_one() -> None:
    registry = MemoryRegistry(max_toolsets=2)
    await registry.put_toolset({"id": "a"})
    await registry.put_toolset({"id": "b"})
    await registry.put_toolset({"id": "a"})  # storing one it has is still a no-op
    with pytest.raises(RegistryFullError, match="maximum of 2 toolsets") as raised:
        await registry.put_toolset({"id": "c"})
    assert raised.value.status_code == 507 and raised.value.code == "registry_full"
    assert await registry.get_toolset("a") == {"id": "a"}
    assert await registry.get_toolset("c") is None
    for n in range(5):  # aliases are bounded alongside, oldest first
        await registry.put_alias(f"k{n}", "a")
    assert [await registry.get_alias(f"k{n}") for n in range(5)] == [None, None, None, "a", "a"]


async def test_a_full_memory_registry_answers_507_in_the_envelope() -> None:
    _, client, life = await start_app(ScriptedBackend(), memory_max_toolsets=1)
    try:
        first = await client.post("/v1/toolsets", json={"tools": [WEATHER_TOOL]})
        assert first.status_code == 201, first.text
        other = {**WEATHER_TOOL, "function": {**WEATHER_TOOL["function"], "name": "get_rain"}}
        full = await client.post("/v1/toolsets", json={"tools": [other]})
        assert full.status_code == 507, full.text
        assert full.json()["error"]["code"] == "registry_full"
        again = await client.get(f"/v1/toolsets/{first.json()['id']}")
        assert again.status_code == 200
    finally:
        await client.aclose()
        await life.__aexit__(None, None, None)


async def test_an_episode_through_the_app_keeps_only_its_newest_events() -> None:
    _, client, life = await start_app(ScriptedBackend(), episode_max_events=3)
    try:
        ts = (await client.post("/v1/toolsets", json={"tools": [WEATHER_TOOL]})).json()
        episode = (await client.post("/v1/episodes", json={"toolset_id": ts["id"]})).json()
        cities = ["Oslo", "Bergen", "Rome", "Lima", "Quito"]
        for city in cities:
            call = {
                "toolset_id": ts["id"],
                "episode_id": episode["episode_id"],
                "tool_calls": [tool_call("get_weather", f'{{"city": "{city}"}}')],
            }
            assert (await client.post("/v1/tool_calls", json=call)).status_code == 200
        events = (await client.get(f"/v1/episodes/{episode['episode_id']}")).json()["events"]
        assert [e["arguments"]["city"] for e in events] == cities[-3:]
    finally:
        await client.aclose()
        await life.__aexit__(None, None, None)


@pytest.mark.redis
async def test_redis_registry_trims_each_episode_to_its_newest_events(
    redis_server: RedisServer,
) -> None:
    client = redis_client(redis_server.url)
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        registry = RedisRegistry(client, prefix="bounds:", max_events=10)
        await registry.create_episode("e", {"toolset_id": "t"})
        for start in range(0, 30, 6):
            await registry.append_events("e", [event(n) for n in range(start, start + 6)])
        assert await raw.llen("bounds:episode:e:events") == 10  # the store itself, not a view
        assert [e["n"] for e in await registry.episode_events("e")] == list(range(20, 30))
        assert [e["n"] for e in await registry.episode_events("e", last=3)] == [27, 28, 29]
        assert await registry.episode_events("e", last=0) == []
        assert 0 < await raw.ttl("bounds:episode:e:events") <= 86_400
    finally:
        await client.aclose()
        await raw.aclose()
