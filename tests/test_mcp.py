"""Toolsets as MCP servers: a real uvicorn server, talked to with the official MCP client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import httpx2
import jsonschema
import mcp_types as types
import orjson
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.conftest import SEARCH_TOOL, WEATHER_OUTPUT, WEATHER_TOOL, ThreadedServer
from tests.doubles import ScriptedBackend
from toolsim.toolsets import DEFAULT_OUTPUT_SCHEMA
from toolsim_toolactor import ActorSettings, create_app


class Actor:
    def __init__(self, server: ThreadedServer, backend: ScriptedBackend) -> None:
        self.url = server.url
        self.backend = backend
        self.http = httpx.Client(base_url=server.url)

    def register(self) -> str:
        r = self.http.post(
            "/v1/toolsets",
            json={
                "tools": [WEATHER_TOOL, SEARCH_TOOL],
                "output_schemas": {"get_weather": WEATHER_OUTPUT},
                "infer_output_schemas": False,  # search keeps the fallback {"result"}
            },
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def mcp_url(self, toolset_id: str) -> str:
        return f"{self.url}/v1/toolsets/{toolset_id}/mcp"


@pytest.fixture
def actor() -> Iterator[Actor]:
    backend = ScriptedBackend()
    with ThreadedServer(create_app(ActorSettings(), backend=backend)) as server:
        actor = Actor(server, backend)
        try:
            yield actor
        finally:
            actor.http.close()


@asynccontextmanager
async def mcp_session(
    url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def test_initialize_and_list_tools(actor: Actor) -> None:
    ts = actor.register()
    async with mcp_session(actor.mcp_url(ts)) as session:
        assert session.initialize_result is not None
        assert session.initialize_result.capabilities.tools is not None
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
    assert set(tools) == {"get_weather", "search"}
    assert tools["get_weather"].description == "Current weather in a city."
    assert tools["get_weather"].input_schema == WEATHER_TOOL["function"]["parameters"]
    assert tools["get_weather"].output_schema == WEATHER_OUTPUT
    assert tools["search"].input_schema == SEARCH_TOOL["function"]["parameters"]
    assert tools["search"].output_schema == DEFAULT_OUTPUT_SCHEMA


async def test_call_tool_returns_the_rest_observation(actor: Actor) -> None:
    ts = actor.register()
    async with mcp_session(actor.mcp_url(ts)) as session:
        result = await session.call_tool("get_weather", {"city": "Paris", "unit": "celsius"})
    assert not result.is_error
    structured = result.structured_content
    jsonschema.validate(structured, WEATHER_OUTPUT)
    (text,) = result.content
    assert isinstance(text, types.TextContent) and orjson.loads(text.text) == structured
    # The same call over REST hits the same cache entry: the very same observation.
    r = actor.http.post(
        f"/v1/toolsets/{ts}/tools/get_weather", json={"city": "Paris", "unit": "celsius"}
    )
    assert r.status_code == 200 and r.headers["x-toolsim-source"] == "cache"
    assert r.json() == structured
    assert len(actor.backend.calls) == 1


async def test_trailing_slash_serves_the_same_toolset(actor: Actor) -> None:
    ts = actor.register()
    async with mcp_session(actor.mcp_url(ts) + "/") as session:
        names = [tool.name for tool in (await session.list_tools()).tools]
    assert sorted(names) == ["get_weather", "search"]


async def test_bad_arguments_are_a_tool_error_naming_the_field(actor: Actor) -> None:
    ts = actor.register()
    async with mcp_session(actor.mcp_url(ts)) as session:
        missing = await session.call_tool("get_weather", {"unit": "celsius"})
        wrong = await session.call_tool("get_weather", {"city": "Oslo", "unit": "kelvin"})
        unknown = await session.call_tool("no_such_tool", {})
        # the session survives its errors
        ok = await session.call_tool("search", {"query": "MCP"})
    for result, expected in (
        (missing, ["invalid_arguments", "city"]),
        (wrong, ["invalid_arguments", "unit", "kelvin"]),
        (unknown, ["tool_not_found", "no_such_tool"]),
    ):
        assert result.is_error and result.structured_content is None
        (text,) = result.content
        assert isinstance(text, types.TextContent)
        assert all(word in text.text for word in expected), text.text
    assert not ok.is_error and set(ok.structured_content or {}) == {"result"}
    assert len(actor.backend.calls) == 1  # invalid calls never reach the model


async def test_backend_down_is_a_tool_error(actor: Actor) -> None:
    ts = actor.register()
    actor.backend.unavailable = True
    async with mcp_session(actor.mcp_url(ts)) as session:
        result = await session.call_tool("search", {"query": "down"})
    assert result.is_error
    (text,) = result.content
    assert isinstance(text, types.TextContent) and "backend_unavailable" in text.text


async def test_episode_header_reaches_the_episode(actor: Actor) -> None:
    ts = actor.register()
    r = actor.http.post("/v1/episodes", json={"toolset_id": ts, "seed": 7})
    episode = r.json()["episode_id"]
    async with mcp_session(actor.mcp_url(ts), {"X-Episode-Id": episode}) as session:
        result = await session.call_tool("search", {"query": "Lyon"})
    assert not result.is_error
    assert actor.backend.calls[-1].seed == 7  # the episode's seed, not the default
    events = actor.http.get(f"/v1/episodes/{episode}").json()["events"]
    assert [(e["tool"], e["arguments"]) for e in events] == [("search", {"query": "Lyon"})]
    assert orjson.loads(events[0]["observation"]) == result.structured_content

    async with mcp_session(actor.mcp_url(ts), {"X-Episode-Id": "ep_missing"}) as session:
        missing = await session.call_tool("search", {"query": "Lyon"})
    (text,) = missing.content
    assert missing.is_error and isinstance(text, types.TextContent)
    assert "episode_not_found" in text.text


def test_unknown_toolset_is_a_404_envelope(actor: Actor) -> None:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"},
        },
    }
    headers = {"Accept": "application/json, text/event-stream"}
    for path in ("/v1/toolsets/ts_nope/mcp", "/v1/toolsets/ts_nope/mcp/"):
        r = actor.http.post(path, json=initialize, headers=headers)
        assert r.status_code == 404, r.text
        error = r.json()["error"]
        assert error["code"] == "toolset_not_found" and "ts_nope" in error["message"]
        assert error["type"] == "not_found_error"


async def test_sdk_client_sees_the_404(actor: Actor) -> None:
    with pytest.raises(BaseExceptionGroup) as info:
        async with mcp_session(actor.mcp_url("ts_nope")):
            pass
    assert info.group_contains(MCPError, match="Not Found", depth=None)


async def test_non_object_output_is_served_as_text(actor: Actor) -> None:
    r = actor.http.post(
        "/v1/toolsets",
        json={"tools": [SEARCH_TOOL], "output_schemas": {"search": {"type": "string"}}},
    )
    assert r.status_code == 201, r.text
    async with mcp_session(actor.mcp_url(r.json()["id"])) as session:
        (tool,) = (await session.list_tools()).tools
        result = await session.call_tool("search", {"query": "text"})
    assert tool.output_schema is None  # MCP output schemas describe objects only
    assert not result.is_error and result.structured_content is None
    (text,) = result.content
    assert isinstance(text, types.TextContent) and isinstance(orjson.loads(text.text), str)


def test_requests_are_counted_under_the_route_template(actor: Actor) -> None:
    actor.http.post("/v1/toolsets/ts_nope/mcp", json={})
    metrics = actor.http.get("/metrics").text
    assert (
        'toolsim_requests_total{route="/v1/toolsets/{toolset_id}/mcp",status="404"} 1.0' in metrics
    )
