"""The ToolActor on the real packaged model, in process: constrained, valid, batched, grounded."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
import pytest_asyncio
from jsonschema import Draft202012Validator

from tests.conftest import WEATHER_TOOL, packaged_model_dir, tool_call
from toolsim.answers import answer_in_text
from toolsim.llm.embedded import EmbeddedBackend
from toolsim_toolactor import ActorSettings, create_app

pytestmark = pytest.mark.slow

OUTPUT = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "temperature_c": {"type": "integer"},
        "conditions": {"type": "string", "enum": ["sunny", "cloudy", "rain", "snow"]},
    },
    "required": ["city", "temperature_c", "conditions"],
    "additionalProperties": False,
}


class Actor:
    def __init__(self, client: httpx.AsyncClient, backend: EmbeddedBackend) -> None:
        self.http, self.backend = client, backend


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def actor() -> AsyncIterator[Actor]:
    backend = EmbeddedBackend(packaged_model_dir())
    app = create_app(ActorSettings(max_tokens=96), backend=backend)
    async with app.router.lifespan_context(app):
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://a", timeout=600
        )
        yield Actor(client, backend)
        await client.aclose()


@pytest.mark.asyncio(loop_scope="module")
async def test_real_model_observation_is_schema_valid_and_replayed(actor: Actor) -> None:
    body = {
        "tools": [WEATHER_TOOL],
        "output_schemas": {"get_weather": OUTPUT},
        "tool_calls": [tool_call("get_weather", '{"city": "Paris"}')],
    }
    r = await actor.http.post("/v1/tool_calls", json=body)
    assert r.status_code == 200, r.text
    observation = orjson.loads(r.json()["messages"][0]["content"])
    Draft202012Validator(OUTPUT).validate(observation)
    again = await actor.http.post("/v1/tool_calls", json=body)
    assert again.json()["observations"][0]["source"] == "cache"
    assert again.json()["messages"] == r.json()["messages"]


@pytest.mark.asyncio(loop_scope="module")
async def test_parallel_calls_are_decoded_in_one_batch(actor: Actor) -> None:
    cities = ["Oslo", "Lima", "Cairo", "Quito", "Dakar", "Perth", "Hanoi", "Minsk"]
    calls = [
        tool_call("get_weather", orjson.dumps({"city": c}).decode(), f"call_{i}")
        for i, c in enumerate(cities)
    ]
    before = actor.backend.stats_snapshot()
    r = await actor.http.post(
        "/v1/tool_calls",
        json={
            "tools": [WEATHER_TOOL],
            "output_schemas": {"get_weather": OUTPUT},
            "tool_calls": calls,
            "seed": 11,
        },
    )
    assert r.status_code == 200, r.text
    for message in r.json()["messages"]:
        Draft202012Validator(OUTPUT).validate(orjson.loads(message["content"]))
    after = actor.backend.stats_snapshot()
    # a delta: max_batch_size is a running maximum an earlier test may have set
    wide = after.decode_steps_with(4) - before.decode_steps_with(4)
    assert wide >= 4, f"{wide} decode steps of 4+ rows: parallel calls not decoded together"
    steps = after.decode_steps - before.decode_steps
    tokens = after.completion_tokens - before.completion_tokens
    assert steps < tokens / 2, f"{steps} decode steps for {tokens} tokens: not batched"


@pytest.mark.asyncio(loop_scope="module")
async def test_grounded_episode_on_the_real_model(actor: Actor) -> None:
    search = {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search an encyclopedia.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    }
    out = {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 60},
            "snippet": {"type": "string", "maxLength": 200},
        },
        "required": ["title", "snippet"],
        "additionalProperties": False,
    }
    ts = (
        await actor.http.post(
            "/v1/toolsets", json={"tools": [search], "output_schemas": {"search": out}}
        )
    ).json()
    grounding = {
        "question": "Where was Ada Lovelace born?",
        "answer": "London",
        "passages": [{"title": "Ada Lovelace", "text": "Ada Lovelace was born in London in 1815."}],
    }
    episode = (
        await actor.http.post(
            "/v1/episodes", json={"toolset_id": ts["id"], "seed": 2, "grounding": grounding}
        )
    ).json()["episode_id"]
    r = await actor.http.post(
        f"/v1/toolsets/{ts['id']}/tools/search",
        json={"query": "Ada Lovelace birthplace"},
        headers={"X-Episode-Id": episode},
    )
    assert r.status_code == 200, r.text
    observation = r.json()
    Draft202012Validator(out).validate(observation)
    # usefulness defaults to 1: the call is useful, so the observation carries the fact, the
    # passage's own sentence copied into the text slot, not whatever the model would invent
    assert answer_in_text([grounding["answer"]], orjson.dumps(observation).decode()), observation
    assert "Ada Lovelace was born in London" in observation["snippet"], observation
    events = (await actor.http.get(f"/v1/episodes/{episode}")).json()["events"]
    assert len(events) == 1 and orjson.loads(events[0]["observation"]) == observation
