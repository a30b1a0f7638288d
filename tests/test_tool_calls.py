"""ToolActor behaviour in process, with the scripted backend standing in for the model."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from jsonschema import Draft202012Validator

from tests.conftest import WEATHER_OUTPUT, WEATHER_TOOL, AppClient, tool_call
from tests.doubles import ScriptedBackend


def body(*calls: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "tools": [WEATHER_TOOL],
        "output_schemas": {"get_weather": WEATHER_OUTPUT},
        "tool_calls": list(calls),
        **extra,
    }


async def test_tool_call_returns_tool_message_valid_against_output_schema(
    actor: AppClient, backend: ScriptedBackend
) -> None:
    r = await actor.http.post(
        "/v1/tool_calls", json=body(tool_call("get_weather", '{"city": "Oslo"}'))
    )
    assert r.status_code == 200, r.text
    data = r.json()
    (message,) = data["messages"]
    assert message["role"] == "tool" and message["tool_call_id"] == "call_1"
    Draft202012Validator(WEATHER_OUTPUT).validate(orjson.loads(message["content"]))
    assert data["observations"][0]["source"] == "simulated"
    assert data["observations"][0]["latency_ms"] >= 0
    # the simulator prompt names the tool and carries the arguments
    prompt = backend.calls[0].messages
    assert "get_weather" in prompt[-1]["content"] and '"city":"Oslo"' in prompt[-1]["content"]
    assert backend.calls[0].json_schema == WEATHER_OUTPUT


async def test_same_call_replays_from_cache(actor: AppClient, backend: ScriptedBackend) -> None:
    call = body(tool_call("get_weather", '{"city": "Oslo"}'))
    first = (await actor.http.post("/v1/tool_calls", json=call)).json()
    # Same arguments written differently: same canonical call, same observation.
    call2 = body(tool_call("get_weather", '{ "city":"Oslo" }', call_id="call_9"))
    second = (await actor.http.post("/v1/tool_calls", json=call2)).json()
    assert second["observations"][0]["source"] == "cache"
    assert second["messages"][0]["content"] == first["messages"][0]["content"]
    assert second["messages"][0]["tool_call_id"] == "call_9"
    assert len(backend.calls) == 1


async def test_seed_is_part_of_the_key(actor: AppClient, backend: ScriptedBackend) -> None:
    call = tool_call("get_weather", '{"city": "Oslo"}')
    a = (await actor.http.post("/v1/tool_calls", json=body(call, seed=1))).json()
    b = (await actor.http.post("/v1/tool_calls", json=body(call, seed=2))).json()
    assert a["messages"][0]["content"] != b["messages"][0]["content"]
    assert len(backend.calls) == 2


async def test_parallel_tool_calls_are_simulated_concurrently(
    actor: AppClient, backend: ScriptedBackend
) -> None:
    backend.delay_s = 0.3
    calls = [
        tool_call("get_weather", orjson.dumps({"city": f"c{i}"}).decode(), f"call_{i}")
        for i in range(4)
    ]
    loop = asyncio.get_running_loop()
    started = loop.time()
    r = await actor.http.post("/v1/tool_calls", json=body(*calls))
    elapsed = loop.time() - started
    assert r.status_code == 200
    assert [m["tool_call_id"] for m in r.json()["messages"]] == [f"call_{i}" for i in range(4)]
    assert elapsed < 4 * 0.3 * 0.6, f"4 calls of 0.3 s took {elapsed:.2f} s: not concurrent"


async def test_identical_concurrent_calls_are_coalesced(
    actor: AppClient, backend: ScriptedBackend
) -> None:
    backend.delay_s = 0.2
    call = body(tool_call("get_weather", '{"city": "Oslo"}'))
    responses = await asyncio.gather(
        *(actor.http.post("/v1/tool_calls", json=call) for _ in range(32))
    )
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["messages"][0]["content"] for r in responses}) == 1
    assert len(backend.calls) == 1
    sources = sorted(r.json()["observations"][0]["source"] for r in responses)
    assert sources == ["cache"] * 31 + ["simulated"]  # one generated, the others replayed it
    metrics = (await actor.http.get("/metrics")).text
    assert "toolsim_coalesced_calls_total 31.0" in metrics


async def test_invalid_generations_are_retried_never_returned_or_cached(
    actor: AppClient, backend: ScriptedBackend
) -> None:
    backend.bad_outputs = ["not json", '{"city": 3}', "<length>"]
    call = body(tool_call("get_weather", '{"city": "Oslo"}'))
    r = await actor.http.post("/v1/tool_calls", json=call)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "generation_failed"
    assert len(backend.calls) == 3
    seeds = [c.seed for c in backend.calls]
    assert len(set(seeds)) == 3, "each retry must use a new seed"
    # the failure was not cached: the next call generates again and succeeds
    r = await actor.http.post("/v1/tool_calls", json=call)
    assert r.status_code == 200 and r.json()["observations"][0]["source"] == "simulated"
    metrics = (await actor.http.get("/metrics")).text
    assert "toolsim_schema_violations_total 2.0" in metrics
    assert 'toolsim_generation_retries_total{reason="invalid_json"} 1.0' in metrics


async def test_one_bad_generation_then_success(actor: AppClient, backend: ScriptedBackend) -> None:
    backend.bad_outputs = ['{"city": "Oslo"}']  # misses required fields
    r = await actor.http.post(
        "/v1/tool_calls", json=body(tool_call("get_weather", '{"city": "Oslo"}'))
    )
    assert r.status_code == 200
    assert len(backend.calls) == 2


async def test_tool_without_output_schema_gets_default(
    actor: AppClient, backend: ScriptedBackend
) -> None:
    """With inference off the tool gets the fallback schema (inference: test_schema_inference)."""
    r = await actor.http.post(
        "/v1/tool_calls",
        json={
            "tools": [WEATHER_TOOL],
            "infer_output_schemas": False,
            "tool_calls": [tool_call("get_weather", '{"city": "Oslo"}')],
        },
    )
    assert r.status_code == 200
    assert set(orjson.loads(r.json()["messages"][0]["content"])) == {"result"}
    assert backend.inferences == []


async def test_openai_sdk_messages_append_unchanged(actor: AppClient) -> None:
    """A chat completion's tool_calls, dumped by the official SDK, go in; messages come back
    in a shape the SDK accepts as conversation messages."""
    from openai.types.chat import ChatCompletion, ChatCompletionToolMessageParam
    from pydantic import TypeAdapter

    completion = ChatCompletion.model_validate(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "tool_calls",
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [tool_call("get_weather", '{"city": "Oslo"}', "call_abc")],
                    },
                }
            ],
        }
    )
    message = completion.choices[0].message
    assert message.tool_calls is not None
    r = await actor.http.post(
        "/v1/tool_calls",
        json={
            "tools": [WEATHER_TOOL],
            "tool_calls": [tc.model_dump() for tc in message.tool_calls],
        },
    )
    assert r.status_code == 200, r.text
    adapter = TypeAdapter(ChatCompletionToolMessageParam)
    for m in r.json()["messages"]:
        assert adapter.validate_python(m) == m
    assert r.json()["messages"][0]["tool_call_id"] == "call_abc"


async def test_tool_calls_has_one_path_and_is_documented(actor: AppClient) -> None:
    """``POST /v1/tool_calls`` is answered by the app's fast path only: no mounted route
    serves it, the CLI serves ``create_app``'s app as is, and the OpenAPI document still
    describes the operation."""
    import inspect

    from toolsim import cli
    from toolsim_toolactor.app import ToolActorApp

    app = actor.app
    assert isinstance(app, ToolActorApp)
    mounted = [r for r in app.routes if getattr(r, "path", None) == "/v1/tool_calls"]
    assert mounted == []
    document = (await actor.http.get("/openapi.json")).json()
    operation = document["paths"]["/v1/tool_calls"]["post"]
    assert operation["operationId"] == "createToolCalls"
    assert "requestBody" in operation and "200" in operation["responses"]
    source = inspect.getsource(cli)
    assert "routes" not in source, "the CLI builds the service through create_app only"
