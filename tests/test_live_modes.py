"""Tool modes in the ToolActor: simulated, live (real tool) and record (real tool, replayed later)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI, Request
from starlette.responses import Response

from tests.conftest import WEATHER_TOOL, ThreadedServer, start_app, tool_call
from tests.doubles import ScriptedBackend
from toolsim.tools import utility_definitions

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CALC, CALC_OUT = utility_definitions(["calculator"])["calculator"]
SEARCH, SEARCH_OUT = utility_definitions(["search"])["search"]


def calc_call(expression: str, call_id: str = "c1") -> dict[str, Any]:
    return tool_call("calculator", orjson.dumps({"expression": expression}).decode(), call_id)


class Actor:
    def __init__(self, http: httpx.AsyncClient, backend: ScriptedBackend) -> None:
        self.http, self.backend = http, backend


@pytest.fixture
async def actor() -> AsyncIterator[Actor]:
    backend = ScriptedBackend()
    corpus = [str(DATA / "context" / "hotpotqa_train_corpus.json")]
    _, client, life = await start_app(
        backend,
        search_corpus=corpus,
        live_tools=["search", "calculator"],  # live mode is the operator's to enable
        live_hosts=["127.0.0.1"],
        live_allowed_networks=["127.0.0.0/8"],  # the test's endpoint is on loopback
    )
    try:
        yield Actor(client, backend)
    finally:
        await client.aclose()
        await life.__aexit__(None, None, None)


async def test_live_calculator_answers_exactly_without_the_llm(actor: Actor) -> None:
    r = await actor.http.post(
        "/v1/tool_calls",
        json={
            "tools": [CALC],
            "output_schemas": {"calculator": CALC_OUT},
            "modes": {"calculator": "live"},
            "tool_calls": [calc_call("1/3 + 1/6")],
        },
    )
    assert r.status_code == 200, r.text
    assert orjson.loads(r.json()["messages"][0]["content"]) == {"result": "1/2", "error": None}
    assert r.json()["observations"][0]["source"] == "live"
    assert actor.backend.calls == []


async def test_record_then_replay_in_simulated_mode(actor: Actor) -> None:
    base = {"tools": [CALC], "output_schemas": {"calculator": CALC_OUT}}
    recorded = await actor.http.post(
        "/v1/tool_calls",
        json={**base, "modes": {"calculator": "record"}, "tool_calls": [calc_call("2**100")]},
    )
    assert recorded.json()["observations"][0]["source"] == "live"
    # the same agent code, simulated mode, another seed: the recorded real observation replays
    replay = await actor.http.post(
        "/v1/tool_calls", json={**base, "seed": 99, "tool_calls": [calc_call("2**100")]}
    )
    assert replay.json()["observations"][0]["source"] == "cache"
    assert replay.json()["messages"][0]["content"] == recorded.json()["messages"][0]["content"]
    assert orjson.loads(replay.json()["messages"][0]["content"])["result"] == str(2**100)
    assert actor.backend.calls == []
    other = await actor.http.post("/v1/tool_calls", json={**base, "tool_calls": [calc_call("7*6")]})
    assert other.json()["observations"][0]["source"] == "simulated"  # never recorded: simulated


async def test_live_search_over_the_shared_corpus(actor: Actor) -> None:
    question = orjson.loads((DATA / "context" / "hotpotqa_train.json").read_bytes())[0]
    gold = {title for title, _ in question["supporting_facts"]}
    r = await actor.http.post(
        "/v1/toolsets",
        json={
            "tools": [SEARCH],
            "output_schemas": {"search": SEARCH_OUT},
            "modes": {"search": "live"},
        },
    )
    assert r.status_code == 201, r.text
    hit = await actor.http.post(
        f"/v1/toolsets/{r.json()['id']}/tools/search",
        json={"query": question["question"], "top_k": 5},
    )
    assert hit.status_code == 200 and hit.headers["x-toolsim-source"] == "live"
    assert gold & {p["title"] for p in hit.json()["results"]}


async def test_live_mode_needs_a_real_implementation(actor: Actor) -> None:
    r = await actor.http.post(
        "/v1/toolsets", json={"tools": [WEATHER_TOOL], "modes": {"get_weather": "live"}}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "modes.get_weather"
    r = await actor.http.post(
        "/v1/toolsets", json={"tools": [WEATHER_TOOL], "modes": {"get_weather": "sometimes"}}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"


async def test_live_http_endpoint_and_its_failures(actor: Actor) -> None:
    api = FastAPI()

    @api.post("/weather")
    async def weather(request: Request) -> Response:
        city = (await request.json())["city"]
        if city == "Boom":
            return Response("down", status_code=500)
        if city == "Text":
            return Response("not json", media_type="text/plain")
        if city == "Odd":
            return Response(b'{"result": 5}', media_type="application/json")
        return Response(
            orjson.dumps({"result": f"18 C and sunny in {city}"}), media_type="application/json"
        )

    with ThreadedServer(api) as server:
        ts = (
            await actor.http.post(
                "/v1/toolsets",
                json={
                    "tools": [WEATHER_TOOL],
                    "modes": {"get_weather": "record"},
                    "live_endpoints": {"get_weather": server.url + "/weather"},
                },
            )
        ).json()

        async def call(city: str) -> httpx.Response:
            return await actor.http.post(
                f"/v1/toolsets/{ts['id']}/tools/get_weather", json={"city": city}
            )

        ok = await call("Oslo")
        assert ok.status_code == 200 and ok.json() == {"result": "18 C and sunny in Oslo"}
        for city in ("Boom", "Text"):
            bad = await call(city)
            assert bad.status_code == 502 and bad.json()["error"]["code"] == "live_tool_failed"
        odd = await call("Odd")  # real but off-schema: returned, counted, not recorded
        assert odd.status_code == 200 and odd.json() == {"result": 5}
    metrics = (await actor.http.get("/metrics")).text
    assert "toolsim_live_schema_mismatches_total 1.0" in metrics
    simulated = {  # the same tool as recorded: nothing is inferred for a record-mode tool
        "tools": [WEATHER_TOOL],
        "infer_output_schemas": False,
        "tool_calls": [tool_call("get_weather", '{"city": "Odd"}')],
    }
    r = await actor.http.post("/v1/tool_calls", json=simulated)
    assert r.json()["observations"][0]["source"] == "simulated"
    replay = await actor.http.post(
        "/v1/tool_calls",
        json={**simulated, "tool_calls": [tool_call("get_weather", '{"city": "Oslo"}')]},
    )
    assert replay.json()["observations"][0]["source"] == "cache"
