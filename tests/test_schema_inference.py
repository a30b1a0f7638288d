"""Inferred output schemas (scripted LLM double): inline, registered and imported tools get
one, once; it is stored, shown, marked and part of the id; a caller can turn it off; a failed
inference falls back without storing anything. And the ``quality`` gate end to end: a
flagged observation is regenerated, returned flagged, replayed flagged, never as a pass."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from jsonschema import Draft202012Validator

from tests.conftest import WEATHER_OUTPUT, WEATHER_TOOL, AppClient, tool_call
from tests.doubles import ScriptedBackend
from toolsim.llm.base import GenerationRequest
from toolsim.registry import MemoryRegistry
from toolsim.schema_inference import (
    FALLBACK_OUTPUT_SCHEMA,
    fields_to_schema,
    found_fields,
    inference_messages,
)
from toolsim_toolactor.protocol import ToolCallsRequest
from toolsim_toolmaker import MakerSettings
from toolsim_toolmaker import create_app as create_maker
from toolsim_trainer.clients import ActorClient
from toolsim_trainer.grammar import ToolCallItem

FIELDS = '{"fields":[{"name":"temperature_c","type":"number"},{"name":"city","type":"string"}]}'
"""What a model might answer for get_weather: one new field, and an argument restated."""
ONLY_ARGUMENTS = '{"fields":[{"name":"city","type":"string"}]}'
INLINE = {
    "tools": [WEATHER_TOOL],
    "tool_calls": [tool_call("get_weather", '{"city": "Oslo"}')],
}


def metric(text: str, sample: str) -> float:
    line = next((x for x in text.splitlines() if x.startswith(sample + " ")), None)
    return float(line.rsplit(" ", 1)[1]) if line else 0.0


def test_the_schema_echoes_simple_arguments_then_adds_what_the_model_found() -> None:
    parameters = WEATHER_TOOL["function"]["parameters"]
    fields = orjson.loads(FIELDS)["fields"] + [
        {"name": "temperature_c", "type": "string"},  # a repeat: the first one counts
        {"name": "city_name", "type": "string"},  # a variant of an argument
        {"name": "result", "type": "string"},  # says nothing
        {"name": "get_weather", "type": "boolean"},  # the tool itself
    ]
    found = found_fields(fields, parameters, "get_weather")
    assert found == [{"name": "temperature_c", "type": "number"}]
    schema = fields_to_schema(found, parameters)
    assert list(schema["properties"]) == ["city", "unit", "temperature_c"]
    assert schema["properties"]["unit"]["enum"] == ["celsius", "fahrenheit"]
    assert schema["properties"]["city"] == {"type": "string", "minLength": 1, "maxLength": 80}
    assert schema["required"] == ["city", "unit", "temperature_c"]
    assert schema["additionalProperties"] is False
    Draft202012Validator.check_schema(schema)
    assert "description" not in orjson.dumps(schema).decode()  # no prose to copy
    last = inference_messages(WEATHER_TOOL)[-1]["content"]
    assert "get_weather" in last and "city, unit" in last


async def test_an_inline_tool_is_inferred_once(actor: AppClient, backend: ScriptedBackend) -> None:
    backend.bad_outputs = [FIELDS]
    first = await actor.http.post("/v1/tool_calls", json=INLINE)
    assert first.status_code == 200, first.text
    observation = orjson.loads(first.json()["messages"][0]["content"])
    assert set(observation) == {"city", "unit", "temperature_c"}
    assert observation["city"] == "Oslo"
    # the same tool in another inline set (and a registered one): no second inference
    other = {**INLINE, "tool_calls": [tool_call("get_weather", '{"city": "Rome"}')], "seed": 4}
    assert (await actor.http.post("/v1/tool_calls", json=other)).status_code == 200
    registered = await actor.http.post("/v1/toolsets", json={"tools": [WEATHER_TOOL]})
    assert registered.json()["output_schemas"]["get_weather"]["properties"].keys() == {
        "city",
        "unit",
        "temperature_c",
    }
    assert len(backend.inferences) == 1 and len(backend.calls) == 2
    metrics = (await actor.http.get("/metrics")).text
    assert metric(metrics, 'toolsim_output_schema_inferences_total{outcome="inferred"}') == 1
    assert metric(metrics, 'toolsim_output_schema_inferences_total{outcome="cached"}') >= 1


async def test_a_registered_toolset_stores_shows_and_marks_the_inferred_schema(
    actor: AppClient, backend: ScriptedBackend
) -> None:
    backend.bad_outputs = [FIELDS]
    r = await actor.http.post("/v1/toolsets", json={"tools": [WEATHER_TOOL]})
    assert r.status_code == 201, r.text
    got = (await actor.http.get(f"/v1/toolsets/{r.json()['id']}")).json()
    assert got["inferred_output_schemas"] == ["get_weather"]
    schema = got["output_schemas"]["get_weather"]
    assert "temperature_c" in schema["properties"]
    # the same tools with that schema given explicitly are another toolset: the mark counts
    given = await actor.http.post(
        "/v1/toolsets", json={"tools": [WEATHER_TOOL], "output_schemas": {"get_weather": schema}}
    )
    assert given.json()["id"] != got["id"] and "inferred_output_schemas" not in given.json()
    off = await actor.http.post(
        "/v1/toolsets", json={"tools": [WEATHER_TOOL], "infer_output_schemas": False}
    )
    assert off.json()["output_schemas"]["get_weather"] == FALLBACK_OUTPUT_SCHEMA
    assert off.json()["id"] not in (got["id"], given.json()["id"])
    assert len(backend.inferences) == 1


async def test_a_failed_inference_falls_back_and_is_not_remembered(
    actor: AppClient, backend: ScriptedBackend
) -> None:
    backend.bad_outputs = [ONLY_ARGUMENTS, "<length>", "not json"]  # three attempts fail
    r = await actor.http.post("/v1/toolsets", json={"tools": [WEATHER_TOOL]})
    assert r.status_code == 201, r.text
    assert r.json()["output_schemas"]["get_weather"] == FALLBACK_OUTPUT_SCHEMA
    assert "inferred_output_schemas" not in r.json()
    assert len(backend.inferences) == 3
    metrics = (await actor.http.get("/metrics")).text
    assert metric(metrics, 'toolsim_output_schema_inferences_total{outcome="fallback"}') == 1
    again = await actor.http.post("/v1/toolsets", json={"tools": [WEATHER_TOOL]})
    assert again.json()["inferred_output_schemas"] == ["get_weather"]  # tried anew, and won
    assert len(backend.inferences) == 4


async def test_no_inference_for_live_tools_for_given_schemas_or_when_turned_off(
    actor: AppClient, backend: ScriptedBackend
) -> None:
    body = {**INLINE, "output_schemas": {"get_weather": WEATHER_OUTPUT}}
    assert (await actor.http.post("/v1/tool_calls", json=body)).status_code == 200
    off = {**INLINE, "infer_output_schemas": False}
    r = await actor.http.post("/v1/tool_calls", json=off)
    assert set(orjson.loads(r.json()["messages"][0]["content"])) == {"result"}
    live = await actor.http.post(
        "/v1/toolsets",
        json={
            "tools": [WEATHER_TOOL],
            "modes": {"get_weather": "record"},
            "live_endpoints": {"get_weather": "http://127.0.0.1:9/weather"},
        },
    )
    if live.status_code == 201:  # where live endpoints are on: the real tool is the truth
        assert live.json()["output_schemas"]["get_weather"] == FALLBACK_OUTPUT_SCHEMA
    assert backend.inferences == []


async def test_a_backend_that_is_down_fails_registration_instead_of_falling_back(
    actor: AppClient, backend: ScriptedBackend
) -> None:
    backend.unavailable = True
    r = await actor.http.post("/v1/toolsets", json={"tools": [WEATHER_TOOL]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "backend_unavailable"
    backend.unavailable = False
    backend.bad_outputs = [FIELDS]
    r = await actor.http.post("/v1/toolsets", json={"tools": [WEATHER_TOOL]})
    assert r.json()["inferred_output_schemas"] == ["get_weather"]


def test_inline_only_fields_are_refused_with_a_toolset_id() -> None:
    with pytest.raises(ValueError, match="infer_output_schemas"):
        ToolCallsRequest.model_validate(
            {
                "toolset_id": "ts_x",
                "infer_output_schemas": False,
                "tool_calls": INLINE["tool_calls"],
            }
        )


# -- the ToolMaker: hand-written tools and OpenAPI imports ---------------------------------


@pytest.fixture
async def maker() -> AsyncIterator[tuple[httpx.AsyncClient, ScriptedBackend]]:
    backend = ScriptedBackend()
    app = create_maker(MakerSettings(), backend=backend, registry=MemoryRegistry())
    async with app.router.lifespan_context(app):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://m")
        yield client, backend
        await client.aclose()


async def test_the_toolmaker_infers_for_hand_written_tools(
    maker: tuple[httpx.AsyncClient, ScriptedBackend],
) -> None:
    client, backend = maker
    backend.bad_outputs = [FIELDS]
    r = await client.post("/v1/toolsets", json={"tools": [WEATHER_TOOL]})
    assert r.status_code == 201, r.text
    assert r.json()["inferred_output_schemas"] == ["get_weather"]
    got = (await client.get(f"/v1/toolsets/{r.json()['id']}")).json()
    assert got["output_schemas"] == r.json()["output_schemas"]
    assert got["inferred_output_schemas"] == ["get_weather"]
    off = await client.post(
        "/v1/toolsets", json={"tools": [WEATHER_TOOL], "infer_output_schemas": False}
    )
    assert off.json()["output_schemas"]["get_weather"] == FALLBACK_OUTPUT_SCHEMA
    assert len(backend.inferences) == 1


def _openapi(responses: dict[str, Any]) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Weather", "version": "1"},
        "paths": {
            "/weather": {
                "get": {
                    "operationId": "get_weather",
                    "summary": "Current weather in a city.",
                    "parameters": [
                        {
                            "name": "city",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": responses,
                }
            }
        },
    }


async def test_an_imported_operation_without_a_response_schema_gets_one(
    maker: tuple[httpx.AsyncClient, ScriptedBackend],
) -> None:
    client, backend = maker
    backend.bad_outputs = [FIELDS]
    bare = _openapi({"200": {"description": "OK", "content": {"application/json": {}}}})
    r = await client.post("/v1/toolsets/import", json=bare)
    assert r.status_code == 201, r.text
    assert r.json()["inferred_output_schemas"] == ["get_weather"]
    assert "temperature_c" in r.json()["output_schemas"]["get_weather"]["properties"]
    declared = _openapi(
        {"200": {"description": "OK", "content": {"application/json": {"schema": WEATHER_OUTPUT}}}}
    )
    r = await client.post("/v1/toolsets/import", json=declared)
    assert "inferred_output_schemas" not in r.json()  # the document says it: kept
    off = await client.post("/v1/toolsets/import?infer_output_schemas=false", json=bare)
    assert "inferred_output_schemas" not in off.json()
    assert len(backend.inferences) == 1


# -- the quality gate end to end ------------------------------------------------------------

EMPTY = '{"result":", "}'  # what the README example returned before issue 12


async def test_an_implausible_observation_is_retried_then_flagged_and_replayed_flagged(
    actor: AppClient, backend: ScriptedBackend
) -> None:
    body = {**INLINE, "infer_output_schemas": False}
    backend.bad_outputs = [EMPTY, EMPTY]
    healed = await actor.http.post("/v1/tool_calls", json=body)
    assert "flags" not in healed.json()["observations"][0]  # the third attempt passed
    assert len(backend.calls) == 3

    body["seed"] = 9
    backend.bad_outputs = [EMPTY, '{"result":"pending-pending-pending"}', EMPTY]
    r = await actor.http.post("/v1/tool_calls", json=body)
    info = r.json()["observations"][0]
    assert info["flags"] == ["quality"] and info["quality"] == {"reason": "no_substance"}
    assert r.json()["messages"][0]["content"] == EMPTY  # the last schema-valid one
    for _ in range(2):  # replayed from the cache, still flagged: never served as a pass
        again = await actor.http.post("/v1/tool_calls", json=body)
        assert again.json()["observations"][0]["source"] == "cache"
        assert again.json()["observations"][0]["flags"] == ["quality"]
    assert len(backend.calls) == 6
    metrics = (await actor.http.get("/metrics")).text
    for reason, count in (("no_substance", 4), ("repeated_fragment", 1)):
        sample = f'toolsim_check_failures_total{{flag="quality",reason="{reason}"}}'
        assert metric(metrics, sample) == count
    assert metric(metrics, 'toolsim_flagged_observations_total{flag="quality"}') == 1


async def test_the_rest_face_and_the_trainer_see_the_quality_flag(
    actor: AppClient, backend: ScriptedBackend
) -> None:
    ts = (
        await actor.http.post(
            "/v1/toolsets", json={"tools": [WEATHER_TOOL], "infer_output_schemas": False}
        )
    ).json()["id"]
    backend.bad_outputs = [EMPTY] * 3
    rest = await actor.http.post(f"/v1/toolsets/{ts}/tools/get_weather", json={"city": "Oslo"})
    assert rest.headers["x-toolsim-flags"] == "quality"
    assert rest.headers["x-toolsim-quality"] == "no_substance"
    client = ActorClient("http://actor", http=actor.http)
    (result,) = await client.call_tools(ts, [ToolCallItem("get_weather", {"city": "Oslo"})])
    assert result.ok and result.flags == ("quality",)  # out of rewards and SFT data


async def test_the_simulator_prompt_restates_the_call_and_lists_the_fields(
    actor: AppClient, backend: ScriptedBackend
) -> None:
    body = {**INLINE, "output_schemas": {"get_weather": WEATHER_OUTPUT}}
    assert (await actor.http.post("/v1/tool_calls", json=body)).status_code == 200
    request: GenerationRequest = backend.calls[-1]
    roles = [m["role"] for m in request.messages]
    assert roles == ["system", "user", "assistant", "user"]  # a worked example first
    call = request.messages[-1]["content"]
    assert 'get_weather({"city":"Oslo"})' in call and "city is Oslo" in call
    assert "- temperature (number)" in call and "JSON Schema" not in call
    assert request.presence_penalty > 0
