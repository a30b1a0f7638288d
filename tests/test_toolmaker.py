"""The ToolMaker in process (scripted LLM double): generation pipeline, validation, registry,
the OpenAI chat-completions face, and the ToolActor resolving what it stored."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from tests.conftest import WEATHER_TOOL, tool_call
from tests.doubles import ScriptedBackend
from toolsim import toolsets
from toolsim.registry import MemoryRegistry
from toolsim_toolactor import ActorSettings
from toolsim_toolactor import create_app as create_actor
from toolsim_toolmaker import MakerSettings, create_app
from toolsim_toolmaker.taxonomy import CLASS_WORDS, TASK_CLASSES
from toolsim_toolmaker.validation import check_strict_tool

TASK = "Which country was the director of the film Inception born in?"


class Pair:
    def __init__(
        self, maker: httpx.AsyncClient, actor: httpx.AsyncClient, backend: ScriptedBackend
    ):
        self.maker, self.actor, self.backend = maker, actor, backend


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    registry = MemoryRegistry()  # the registry both services share
    backend = ScriptedBackend()
    maker_app = create_app(MakerSettings(), backend=backend, registry=registry)
    actor_app = create_actor(ActorSettings(), backend=ScriptedBackend(), registry=registry)
    async with (
        maker_app.router.lifespan_context(maker_app),
        actor_app.router.lifespan_context(actor_app),
    ):
        maker = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=maker_app), base_url="http://maker"
        )
        actor = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=actor_app), base_url="http://actor"
        )
        yield Pair(maker, actor, backend)
        await maker.aclose()
        await actor.aclose()


async def test_task_becomes_a_strict_validated_toolset(pair: Pair) -> None:
    r = await pair.maker.post("/v1/toolsets", json={"task": TASK, "max_tools": 2, "seed": 0})
    assert r.status_code == 201, r.text
    toolset = r.json()
    assert toolset["id"].startswith("ts_") and toolset["task_class"] in TASK_CLASSES
    names = [t["function"]["name"] for t in toolset["tools"]]
    assert len(names) == len(set(names))
    generated = [t for t in toolset["tools"] if t["function"].get("strict")]
    assert generated, "no generated tool"
    for i, tool in enumerate(generated):
        check_strict_tool(tool, toolset["output_schemas"][tool["function"]["name"]], f"tools[{i}]")
    for schema in toolset["output_schemas"].values():
        Draft202012Validator.check_schema(schema)
    # the first generation request was constrained to the spec schema, classification to choices
    kinds = [("choices" if c.choices else "schema") for c in pair.backend.calls]
    assert kinds == ["choices", "schema"]
    assert pair.backend.calls[0].choices == list(CLASS_WORDS)


async def test_utility_tools_are_merged_by_class_or_by_name(pair: Pair) -> None:
    r = await pair.maker.post(
        "/v1/toolsets", json={"task": TASK, "utility_tools": ["calculator", "search"]}
    )
    names = {t["function"]["name"] for t in r.json()["tools"]}
    assert {"calculator", "search"} <= names
    r = await pair.maker.post("/v1/toolsets", json={"task": TASK, "utility_tools": [], "seed": 5})
    assert not {"calculator", "search", "python"} & {
        t["function"]["name"] for t in r.json()["tools"]
    }


async def test_same_task_and_seed_cost_one_generation(pair: Pair) -> None:
    body = {"task": TASK, "seed": 3}
    first = await pair.maker.post("/v1/toolsets", json=body)
    calls = len(pair.backend.calls)
    second = await pair.maker.post("/v1/toolsets", json=body)
    assert second.json() == first.json() and len(pair.backend.calls) == calls
    third = await pair.maker.post("/v1/toolsets", json={**body, "seed": 4})
    assert len(pair.backend.calls) > calls and third.status_code == 201


async def test_invalid_generations_are_retried_then_fail_clearly(pair: Pair) -> None:
    pair.backend.bad_outputs = ["physics", '{"tools": 3}', "<length>", "nope", "nope"]
    r = await pair.maker.post("/v1/toolsets", json={"task": TASK, "seed": 9})
    # the classification answer was not a class: that is a clear failure, not a default
    assert r.status_code == 502 and r.json()["error"]["code"] == "generation_failed"
    pair.backend.bad_outputs = ['{"tools": 3}', "<length>"]
    # classification by choice, then two invalid specs, then a valid one
    pair.backend.bad_outputs.insert(0, "math")
    r = await pair.maker.post("/v1/toolsets", json={"task": TASK, "seed": 10})
    assert r.status_code == 201, r.text
    metrics = (await pair.maker.get("/metrics")).text
    assert 'toolmaker_invalid_generations_total{reason="spec_schema"} 1.0' in metrics
    assert 'toolmaker_invalid_generations_total{reason="length"} 1.0' in metrics


async def test_the_toolactor_resolves_what_the_toolmaker_stored(pair: Pair) -> None:
    toolset = (
        await pair.maker.post("/v1/toolsets", json={"task": TASK, "utility_tools": []})
    ).json()
    tool = toolset["tools"][0]["function"]
    arguments = {
        name: "x" if "string" in str(s["type"]) else 1
        for name, s in tool["parameters"]["properties"].items()
    }
    import orjson

    r = await pair.actor.post(
        "/v1/tool_calls",
        json={
            "toolset_id": toolset["id"],
            "tool_calls": [tool_call(tool["name"], orjson.dumps(arguments).decode())],
        },
    )
    assert r.status_code == 200, r.text
    observation = orjson.loads(r.json()["messages"][0]["content"])
    Draft202012Validator(toolset["output_schemas"][tool["name"]]).validate(observation)
    listing = (await pair.maker.get("/v1/toolsets", params={"limit": 1})).json()
    assert (
        listing["total"] == 1
        and listing["data"][0]["id"] == toolset["id"]
        and not listing["has_more"]
    )


async def test_hand_written_tools_are_validated_without_generation(pair: Pair) -> None:
    r = await pair.maker.post("/v1/toolsets", json={"tools": [WEATHER_TOOL]})
    assert r.status_code == 201 and r.json()["task_class"] is None
    assert pair.backend.calls == []
    got = await pair.maker.get(f"/v1/toolsets/{r.json()['id']}")
    assert got.json()["tools"] == [WEATHER_TOOL]
    strict = {"type": "function", "function": {**WEATHER_TOOL["function"], "strict": True}}
    r = await pair.maker.post("/v1/toolsets", json={"tools": [strict]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_tool_definition"
    assert (
        "additionalProperties" in r.json()["error"]["message"]
        or "required" in r.json()["error"]["message"]
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"task": "   "}, "task"),
        ({"task": "x" * 5000}, "task"),
        ({"task": TASK, "max_tools": 0}, "max_tools"),
        ({"task": TASK, "max_tools": 99}, "max_tools"),
        ({"task": TASK, "utility_tools": ["search", "teleport"]}, "utility_tools[1]"),
        ({"task": TASK, "tools": [WEATHER_TOOL]}, None),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools[0].function.name",
        ),
        (
            {"tools": [WEATHER_TOOL], "output_schemas": {"get_weather": {"type": 5}}},
            "output_schemas.get_weather",
        ),
    ],
)
async def test_bad_requests(pair: Pair, body: dict[str, Any], param: str | None) -> None:
    r = await pair.maker.post("/v1/toolsets", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] in {"invalid_request", "invalid_tool_definition"}
    if param is not None:
        assert error["param"] == param
    assert (await pair.maker.get("/health")).status_code == 200


async def test_unknown_toolset_and_oversized_body(pair: Pair) -> None:
    r = await pair.maker.get("/v1/toolsets/ts_nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "toolset_not_found"
    r = await pair.maker.post("/v1/toolsets", content=b"{" + b" " * 2_000_000 + b"}")
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


async def test_openai_sdk_drives_generation_through_chat_completions(pair: Pair) -> None:
    import orjson
    from openai import AsyncOpenAI, NotFoundError

    client = AsyncOpenAI(base_url="http://maker/v1", api_key="unused", http_client=pair.maker)
    completion = await client.chat.completions.create(
        model="toolmaker", messages=[{"role": "user", "content": TASK}], seed=0
    )
    toolset = orjson.loads(completion.choices[0].message.content or "")
    direct = (
        await pair.maker.post("/v1/toolsets", json={"task": TASK, "seed": 0, "max_tools": 3})
    ).json()
    assert toolset == direct  # same task, same seed: the same (cached) toolset
    with pytest.raises(NotFoundError):
        await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": TASK}]
        )
    models = await client.models.list()
    assert "toolmaker" in [m.id for m in models.data]


@asynccontextmanager
async def lone_maker(backend: ScriptedBackend, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(MakerSettings(**settings), backend=backend, registry=MemoryRegistry())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://maker") as client:
            yield client


async def test_a_generated_toolset_is_built_once(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    build_tool = toolsets._build_tool

    def counting(i: int, definition: dict[str, Any], *args: Any) -> toolsets.Tool:
        tool = build_tool(i, definition, *args)
        built.append(tool.name)
        return tool

    monkeypatch.setattr(toolsets, "_build_tool", counting)
    r = await pair.maker.post("/v1/toolsets", json={"task": TASK, "max_tools": 2, "seed": 0})
    assert r.status_code == 201, r.text
    names = [t["function"]["name"] for t in r.json()["tools"]]
    assert sorted(built) == sorted(names), f"tools built {built} for a toolset of {names}"


@pytest.mark.parametrize(
    "body",
    [{"task": TASK}, {"tools": [WEATHER_TOOL]}],
    ids=["generation", "schema_inference"],
)
async def test_a_stalled_backend_is_503_within_the_timeout(body: dict[str, Any]) -> None:
    async with lone_maker(ScriptedBackend(delay_s=30), llm_timeout_s=0.2) as maker:
        started = time.perf_counter()
        async with asyncio.timeout(5):  # the old ToolMaker waited out every 30 s generation
            r = await maker.post("/v1/toolsets", json=body)
        elapsed = time.perf_counter() - started
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "backend_unavailable"
    assert "0.2 s" in r.json()["error"]["message"]
    assert int(r.headers["retry-after"]) > 0
    assert elapsed < 2, f"{elapsed:.1f} s for a 0.2 s timeout"


async def test_generations_in_flight_are_capped() -> None:
    backend = ScriptedBackend(delay_s=0.05)
    async with lone_maker(backend, max_concurrent_generations=2) as maker:
        bodies = [{"task": f"{TASK} ({i})", "seed": i} for i in range(6)]
        responses = await asyncio.gather(*(maker.post("/v1/toolsets", json=b) for b in bodies))
    assert [r.status_code for r in responses] == [201] * 6
    assert len(backend.calls) >= 12  # a classification and a generation per task
    assert backend.peak_in_flight == 2, f"{backend.peak_in_flight} generations at once, cap 2"
