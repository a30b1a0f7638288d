"""Toolset registration, per-tool REST endpoints, OpenAPI documents and episodes."""

from __future__ import annotations

from typing import Any

import orjson
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from tests.conftest import SEARCH_TOOL, WEATHER_OUTPUT, WEATHER_TOOL, AppClient, tool_call
from tests.doubles import ScriptedBackend
from toolsim.toolsets import DEFAULT_OUTPUT_SCHEMA


async def register(actor: AppClient, **extra: Any) -> dict[str, Any]:
    r = await actor.http.post(
        "/v1/toolsets",
        json={
            "tools": [WEATHER_TOOL, SEARCH_TOOL],
            "output_schemas": {"get_weather": WEATHER_OUTPUT},
            **extra,
        },
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_toolset_ids_are_content_addressed(actor: AppClient) -> None:
    a = await register(actor)
    b = await register(actor)
    assert a["id"] == b["id"] and a["id"].startswith("ts_")
    c = await register(actor, stateful={"search": True})
    assert c["id"] != a["id"]
    got = (await actor.http.get(f"/v1/toolsets/{a['id']}")).json()
    assert got["tools"][0]["function"]["name"] == "get_weather"
    assert got["output_schemas"]["get_weather"] == WEATHER_OUTPUT
    assert got["inferred_output_schemas"] == ["search"]  # it came without one
    assert got["output_schemas"]["search"] != DEFAULT_OUTPUT_SCHEMA


async def test_toolset_id_calls_and_inline_calls_share_the_cache(
    actor: AppClient, backend: ScriptedBackend
) -> None:
    ts = await register(actor)
    call = tool_call("get_weather", '{"city": "Paris"}')
    r1 = await actor.http.post(
        "/v1/tool_calls", json={"toolset_id": ts["id"], "tool_calls": [call]}
    )
    r2 = await actor.http.post(
        "/v1/tool_calls",
        json={"tools": ts["tools"], "output_schemas": ts["output_schemas"], "tool_calls": [call]},
    )
    assert r2.json()["observations"][0]["source"] == "cache"
    assert r1.json()["messages"][0]["content"] == r2.json()["messages"][0]["content"]


async def test_rest_endpoint_returns_the_observation(
    actor: AppClient, backend: ScriptedBackend
) -> None:
    ts = await register(actor)
    r = await actor.http.post(f"/v1/toolsets/{ts['id']}/tools/get_weather", json={"city": "Rome"})
    assert r.status_code == 200 and r.headers["x-toolsim-source"] == "simulated"
    assert set(r.json()) == {"city", "temperature", "conditions"}
    # the same call through /v1/tool_calls is a cache hit with the same content
    t = await actor.http.post(
        "/v1/tool_calls",
        json={"toolset_id": ts["id"], "tool_calls": [tool_call("get_weather", '{"city": "Rome"}')]},
    )
    assert orjson.loads(t.json()["messages"][0]["content"]) == r.json()
    bad = await actor.http.post(f"/v1/toolsets/{ts['id']}/tools/get_weather", json={"city": 1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "city"
    missing = await actor.http.post(f"/v1/toolsets/{ts['id']}/tools/nope", json={})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "tool_not_found"


async def test_openapi_document_is_valid_3_1(actor: AppClient) -> None:
    ts = await register(actor)
    r = await actor.http.get(f"/v1/toolsets/{ts['id']}/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    validate(doc)  # raises on an invalid OpenAPI 3.1 document
    assert doc["openapi"] == "3.1.0"
    post = doc["paths"][f"/v1/toolsets/{ts['id']}/tools/get_weather"]["post"]
    assert (
        post["requestBody"]["content"]["application/json"]["schema"]
        == WEATHER_TOOL["function"]["parameters"]
    )
    assert post["responses"]["200"]["content"]["application/json"]["schema"] == WEATHER_OUTPUT
    # every status the endpoint answers, as the service's own document lists them
    service = (await actor.http.get("/openapi.json")).json()
    call_tool = service["paths"]["/v1/toolsets/{toolset_id}/tools/{name}"]["post"]
    assert set(post["responses"]) == set(call_tool["responses"])
    assert {"401", "413", "429", "504"} <= set(post["responses"])
    assert [p["$ref"].rsplit("/", 1)[1] for p in post["parameters"]] == ["EpisodeId", "Seed"]
    seeded = await actor.http.post(
        f"/v1/toolsets/{ts['id']}/tools/get_weather?seed=3", json={"city": "Oslo"}
    )
    assert seeded.status_code == 200, seeded.text
    assert (
        seeded.headers["x-toolsim-source"]
        in doc["components"]["headers"]["Source"]["schema"]["enum"]
    )


async def test_episode_history_reaches_the_prompt(
    actor: AppClient, backend: ScriptedBackend
) -> None:
    ts = await register(actor)
    r = await actor.http.post("/v1/episodes", json={"toolset_id": ts["id"], "seed": 7})
    assert r.status_code == 201
    episode = r.json()["episode_id"]
    first = await actor.http.post(
        "/v1/tool_calls",
        json={
            "toolset_id": ts["id"],
            "episode_id": episode,
            "tool_calls": [tool_call("get_weather", '{"city": "Oslo"}')],
        },
    )
    assert first.status_code == 200
    assert backend.calls[-1].seed == 7  # the episode's seed
    obs = first.json()["messages"][0]["content"]
    # the REST face carries the episode in a header
    r = await actor.http.post(
        f"/v1/toolsets/{ts['id']}/tools/search",
        json={"query": "Oslo weather"},
        headers={"X-Episode-Id": episode},
    )
    assert r.status_code == 200
    system_prompt = backend.calls[-1].messages[0]["content"]
    assert "Earlier calls in this episode" in system_prompt and obs in system_prompt
    events = (await actor.http.get(f"/v1/episodes/{episode}")).json()["events"]
    assert [e["tool"] for e in events] == ["get_weather", "search"]
    missing = await actor.http.post(
        f"/v1/toolsets/{ts['id']}/tools/search",
        json={"query": "x"},
        headers={"X-Episode-Id": "ep_nope"},
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "episode_not_found"


ADA = {
    "question": "Where was Ada Lovelace born?",
    "answer": "London",
    "passages": [{"title": "Ada Lovelace", "text": "Ada Lovelace was born in London."}],
}
SEARCH_WITH_COUNT = {  # the excerpt fills `result`; `hits` is left for the model to write
    "type": "object",
    "properties": {"result": {"type": "string", "maxLength": 600}, "hits": {"type": "integer"}},
    "required": ["result", "hits"],
    "additionalProperties": False,
}


async def grounded_and_plain(actor: AppClient, ts: dict[str, Any]) -> tuple[str, str]:
    episodes = []
    for extra in ({"grounding": ADA}, {}):
        r = await actor.http.post("/v1/episodes", json={"toolset_id": ts["id"], "seed": 1, **extra})
        assert r.status_code == 201, r.text
        episodes.append(r.json()["episode_id"])
    return episodes[0], episodes[1]


async def test_grounding_reaches_the_prompt_the_key_and_the_observation(
    actor: AppClient, backend: ScriptedBackend
) -> None:
    ts = await register(
        actor, output_schemas={"get_weather": WEATHER_OUTPUT, "search": SEARCH_WITH_COUNT}
    )
    grounded, plain = await grounded_and_plain(actor, ts)
    call = tool_call("search", '{"query": "Ada Lovelace birthplace"}')
    r = await actor.http.post(
        "/v1/tool_calls",
        json={"toolset_id": ts["id"], "episode_id": grounded, "tool_calls": [call]},
    )
    assert orjson.loads(r.json()["messages"][0]["content"]) == {
        "result": "Ada Lovelace: Ada Lovelace was born in London.",
        "hits": 1,  # the scripted backend's free integer for seed 1
    }
    prompt = backend.calls[-1].messages[0]["content"]
    assert "Answer: London" in prompt and "Ada Lovelace was born in London." in prompt
    r = await actor.http.post(
        "/v1/tool_calls", json={"toolset_id": ts["id"], "episode_id": plain, "tool_calls": [call]}
    )
    assert r.json()["observations"][0]["source"] == "simulated"  # other facts, other key
    assert "Known facts" not in backend.calls[-1].messages[0]["content"]
    assert len(backend.calls) == 2


async def test_an_evidence_call_its_schema_fixes_whole_never_reaches_the_backend(
    actor: AppClient, backend: ScriptedBackend
) -> None:
    # search returns {"result": string}: the excerpt is all of it
    ts = await register(actor, infer_output_schemas=False)
    grounded, _ = await grounded_and_plain(actor, ts)
    body = {
        "toolset_id": ts["id"],
        "episode_id": grounded,
        "tool_calls": [tool_call("search", '{"query": "Ada Lovelace birthplace"}')],
    }
    first = await actor.http.post("/v1/tool_calls", json=body)
    again = await actor.http.post("/v1/tool_calls", json=body)
    assert backend.calls == []
    # compact JSON, as every generation is written; what a constrained decoder must emit
    expected = b'{"result":"Ada Lovelace: Ada Lovelace was born in London."}'
    Draft202012Validator(DEFAULT_OUTPUT_SCHEMA).validate(orjson.loads(expected))
    for r in (first, again):
        assert r.status_code == 200, r.text
        assert r.json()["messages"][0]["content"].encode() == expected
        assert "flags" not in r.json()["observations"][0]
    assert [r.json()["observations"][0]["source"] for r in (first, again)] == [
        "simulated",
        "cache",
    ]
    metrics = (await actor.http.get("/metrics")).text
    assert "toolsim_fixed_observations_total 1.0" in metrics
    assert "toolsim_generation_latency_seconds_count 0.0" in metrics


async def test_stateful_tools_depend_on_history(actor: AppClient, backend: ScriptedBackend) -> None:
    ts = await register(actor, stateful={"search": True})
    episode = (
        await actor.http.post("/v1/episodes", json={"toolset_id": ts["id"], "seed": 3})
    ).json()["episode_id"]
    call = {
        "toolset_id": ts["id"],
        "episode_id": episode,
        "tool_calls": [tool_call("search", '{"query": "q"}')],
    }
    first = await actor.http.post("/v1/tool_calls", json=call)
    second = await actor.http.post("/v1/tool_calls", json=call)
    # history changed between the two calls, so the stateful tool is simulated again
    assert [
        first.json()["observations"][0]["source"],
        second.json()["observations"][0]["source"],
    ] == ["simulated", "simulated"]
    weather = {**call, "tool_calls": [tool_call("get_weather", '{"city": "Oslo"}')]}
    await actor.http.post("/v1/tool_calls", json=weather)
    again = await actor.http.post("/v1/tool_calls", json=weather)
    assert again.json()["observations"][0]["source"] == "cache"  # stateless: replayed


async def test_episode_belongs_to_its_toolset(actor: AppClient) -> None:
    ts = await register(actor)
    episode = (await actor.http.post("/v1/episodes", json={"toolset_id": ts["id"]})).json()[
        "episode_id"
    ]
    r = await actor.http.post(
        "/v1/tool_calls",
        json={
            "tools": [WEATHER_TOOL],
            "episode_id": episode,
            "tool_calls": [tool_call("get_weather", '{"city": "Oslo"}')],
        },
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "episode_id"


async def test_system_endpoints(actor: AppClient, backend: ScriptedBackend) -> None:
    assert (await actor.http.get("/health")).json() == {"status": "ok"}
    ready = await actor.http.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    models = (await actor.http.get("/v1/models")).json()
    assert models["data"][0]["id"] == "scripted"
    backend.is_ready = False
    assert (await actor.http.get("/ready")).status_code == 503
    await actor.http.post(
        "/v1/tool_calls",
        json={
            "tools": [WEATHER_TOOL],
            "tool_calls": [tool_call("get_weather", '{"city": "Oslo"}')],
        },
    )
    metrics = (await actor.http.get("/metrics")).text
    assert 'toolsim_requests_total{route="/v1/tool_calls",status="200"} 1.0' in metrics
    assert "toolsim_cache_misses_total 1.0" in metrics
    assert 'toolsim_request_latency_seconds_count{route="/v1/tool_calls"} 1.0' in metrics
