"""Bad input: the OpenAI envelope, a stable code, the right status, and the service stays up."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.conftest import WEATHER_TOOL, AppClient, start_app, tool_call
from tests.doubles import ScriptedBackend


def assert_error(r: Any, status: int, code: str, param: str | None = None) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"]
    if param is not None:
        assert error["param"] == param


async def test_unknown_toolset_is_404(actor: AppClient) -> None:
    r = await actor.http.post(
        "/v1/tool_calls", json={"toolset_id": "ts_nope", "tool_calls": [tool_call("x", "{}")]}
    )
    assert_error(r, 404, "toolset_not_found", "toolset_id")
    r = await actor.http.post("/v1/toolsets/ts_nope/tools/x", json={})
    assert_error(r, 404, "toolset_not_found")


async def test_unknown_tool_is_404(actor: AppClient) -> None:
    r = await actor.http.post(
        "/v1/tool_calls",
        json={"tools": [WEATHER_TOOL], "tool_calls": [tool_call("get_time", "{}")]},
    )
    assert_error(r, 404, "tool_not_found", "tool_calls[0].function.name")


@pytest.mark.parametrize(
    ("arguments", "param"),
    [
        ("{not json", "tool_calls[0].function.arguments"),
        ('"a string"', "tool_calls[0].function.arguments"),
        ("{}", "tool_calls[0].function.arguments.city"),
        ('{"city": 5}', "tool_calls[0].function.arguments.city"),
        ('{"city": "Oslo", "unit": "kelvin"}', "tool_calls[0].function.arguments.unit"),
        ('{"city": "Oslo", "extra": 1}', "tool_calls[0].function.arguments.extra"),
    ],
)
async def test_bad_arguments_are_400_naming_the_field(
    actor: AppClient, backend: ScriptedBackend, arguments: str, param: str
) -> None:
    r = await actor.http.post(
        "/v1/tool_calls",
        json={"tools": [WEATHER_TOOL], "tool_calls": [tool_call("get_weather", arguments)]},
    )
    assert_error(r, 400, "invalid_arguments", param)
    assert backend.calls == []


@pytest.mark.parametrize(
    ("call", "param"),
    [
        (
            {"type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
            "tool_calls[0].id",
        ),
        (
            {"id": "c", "type": "function", "function": {"name": "get_weather"}},
            "tool_calls[0].function.arguments",
        ),
        (
            {
                "id": "c",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "x"}},
            },
            "tool_calls[0].function.arguments",
        ),
        (
            {
                "id": "c",
                "type": "retrieval",
                "function": {"name": "get_weather", "arguments": "{}"},
            },
            "tool_calls[0].type",
        ),
        ("not an object", "tool_calls[0]"),
    ],
)
async def test_malformed_tool_call_is_400(actor: AppClient, call: Any, param: str) -> None:
    r = await actor.http.post(
        "/v1/tool_calls", json={"tools": [WEATHER_TOOL], "tool_calls": [call]}
    )
    assert_error(r, 400, "invalid_tool_call", param)


async def test_request_shape_errors(actor: AppClient) -> None:
    r = await actor.http.post(
        "/v1/tool_calls", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert_error(r, 400, "invalid_request")
    r = await actor.http.post("/v1/tool_calls", json={"tool_calls": [tool_call("x", "{}")]})
    assert_error(r, 400, "invalid_request")
    r = await actor.http.post("/v1/tool_calls", json={"tools": [WEATHER_TOOL], "tool_calls": []})
    assert_error(r, 400, "invalid_tool_call", "tool_calls")


async def test_invalid_tool_definitions_are_refused(actor: AppClient) -> None:
    bad_name = {
        "type": "function",
        "function": {"name": "get weather!", "parameters": {"type": "object"}},
    }
    r = await actor.http.post("/v1/toolsets", json={"tools": [bad_name]})
    assert_error(r, 400, "invalid_tool_definition", "tools[0].function.name")
    bad_schema = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object", "properties": 3}},
    }
    r = await actor.http.post("/v1/toolsets", json={"tools": [bad_schema]})
    assert_error(r, 400, "invalid_tool_definition", "tools[0].function.parameters")
    r = await actor.http.post("/v1/toolsets", json={"tools": [WEATHER_TOOL, WEATHER_TOOL]})
    assert_error(r, 400, "invalid_tool_definition", "tools[1].function.name")
    r = await actor.http.post(
        "/v1/toolsets",
        json={"tools": [WEATHER_TOOL], "output_schemas": {"get_weather": {"type": "nonsense"}}},
    )
    assert_error(r, 400, "invalid_tool_definition", "output_schemas.get_weather")
    r = await actor.http.post(
        "/v1/toolsets",
        json={"tools": [WEATHER_TOOL], "output_schemas": {"other": {"type": "object"}}},
    )
    assert_error(r, 400, "invalid_tool_definition", "output_schemas.other")


async def test_oversized_body_is_413() -> None:
    _app, client, lifespan = await start_app(ScriptedBackend(), max_body_bytes=2048)
    try:
        big = {
            "tools": [WEATHER_TOOL],
            "tool_calls": [tool_call("get_weather", '{"city": "' + "x" * 4000 + '"}')],
        }
        r = await client.post("/v1/tool_calls", json=big)
        assert_error(r, 413, "payload_too_large")

        async def chunks() -> Any:  # no content-length: counted while streaming
            for _ in range(10):
                yield b"x" * 1000

        r = await client.post("/v1/tool_calls", content=chunks())
        assert_error(r, 413, "payload_too_large")
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


async def test_backend_down_is_503_with_retry_after(
    actor: AppClient, backend: ScriptedBackend
) -> None:
    backend.unavailable = True
    call = {"tools": [WEATHER_TOOL], "tool_calls": [tool_call("get_weather", '{"city": "Oslo"}')]}
    r = await actor.http.post("/v1/tool_calls", json=call)
    assert_error(r, 503, "backend_unavailable")
    assert int(r.headers["retry-after"]) > 0
    backend.unavailable = False  # not cached: it works when the backend is back
    r = await actor.http.post("/v1/tool_calls", json=call)
    assert r.status_code == 200 and r.json()["observations"][0]["source"] == "simulated"


async def test_backend_timeout_is_503_without_hang() -> None:
    backend = ScriptedBackend(delay_s=30)
    _app, client, lifespan = await start_app(backend, llm_timeout_s=0.2)
    try:
        # the tool has no output schema: its inference is bounded too (it once waited 30 s)
        started = time.perf_counter()
        async with asyncio.timeout(5):
            r = await client.post(
                "/v1/tool_calls",
                json={
                    "tools": [WEATHER_TOOL],
                    "tool_calls": [tool_call("get_weather", '{"city": "Oslo"}')],
                },
            )
        assert time.perf_counter() - started < 2
        assert_error(r, 503, "backend_unavailable")
        assert "0.2" in r.json()["error"]["message"]
    finally:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


async def test_unknown_episode_is_404(actor: AppClient) -> None:
    r = await actor.http.post(
        "/v1/tool_calls",
        json={
            "tools": [WEATHER_TOOL],
            "episode_id": "ep_missing",
            "tool_calls": [tool_call("get_weather", '{"city": "Oslo"}')],
        },
    )
    assert_error(r, 404, "episode_not_found", "episode_id")
    r = await actor.http.post("/v1/episodes", json={"toolset_id": "ts_missing"})
    assert_error(r, 404, "toolset_not_found")


async def test_unknown_route_uses_envelope(actor: AppClient) -> None:
    r = await actor.http.get("/v1/nothing")
    assert_error(r, 404, "not_found")
