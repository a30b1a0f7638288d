"""Issue 12 on the real packaged model: inferred output schemas, and the README's example.

The README shows what ``POST /v1/tool_calls`` returns for its example; this test sends that
very body (read from README.md) to a ToolActor on the packaged model and holds the answer to
the ``quality`` gate, so the README cannot drift into an example the model answers badly.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from jsonschema import Draft202012Validator

from tests.conftest import packaged_model_dir
from toolsim.llm.embedded import EmbeddedBackend
from toolsim.toolsets import build_toolset
from toolsim_toolactor import ActorSettings, create_app
from toolsim_toolactor.checks import check_input, judge
from toolsim_toolactor.prompt import PROMPT_TEXTS
from toolsim_toolactor.quality import quality_gate

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> tuple[dict[str, Any], dict[str, Any]]:
    """The README's curl body and the observation it shows for it."""
    text = README.read_text()
    body = re.search(r"curl -s http://127\.0\.0\.1:8001/v1/tool_calls .*?-d '(.*?)'\n", text, re.S)
    shown = re.search(r"returns, on the packaged model:\n\n```json\n(.*?)\n```", text, re.S)
    if body is None or shown is None:
        pytest.fail("README.md lost its tool_calls example or the observation it shows")
    return orjson.loads(body.group(1)), orjson.loads(shown.group(1))


def tool(name: str, description: str, **params: str) -> dict[str, Any]:
    properties = {k: {"type": v} for k, v in params.items()}
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": list(params)},
        },
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def actor() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ActorSettings(), backend=EmbeddedBackend(packaged_model_dir()))
    async with app.router.lifespan_context(app):
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://a", timeout=600
        )
        yield client
        await client.aclose()


@pytest.mark.asyncio(loop_scope="module")
async def test_the_readme_example_passes_the_quality_gate(actor: httpx.AsyncClient) -> None:
    body, shown = readme_example()
    r = await actor.post("/v1/tool_calls", json=body)
    assert r.status_code == 200, r.text
    info = r.json()["observations"][0]
    assert info["source"] == "simulated" and "flags" not in info, info
    observation = orjson.loads(r.json()["messages"][0]["content"])
    # judge it here too, against the schema the tool really got (inferred or given)
    definition = body["tools"][0]
    name = definition["function"]["name"]
    schemas = body.get("output_schemas") or {}
    if name not in schemas:
        registered = await actor.post("/v1/toolsets", json={"tools": [definition]})
        schemas = registered.json()["output_schemas"]
    the_tool = build_toolset([definition], schemas).tools[name]
    Draft202012Validator(the_tool.output_schema).validate(observation)
    arguments = orjson.loads(body["tool_calls"][0]["function"]["arguments"])
    gate = (quality_gate(PROMPT_TEXTS),)
    for value in (observation, shown):  # what it returns here, and what the README shows
        verdict = judge(gate, check_input(the_tool, arguments, value))
        assert verdict.passed, (value, verdict.failures)


@pytest.mark.asyncio(loop_scope="module")
async def test_inferred_schemas_on_the_real_model_are_valid_and_stored(
    actor: httpx.AsyncClient,
) -> None:
    tools = [
        tool("get_stock_quote", "Latest price of a stock by its ticker symbol.", symbol="string"),
        tool("get_country_facts", "Key facts about a country.", country="string"),
        tool("get_movie_info", "Facts about a film by its title.", title="string"),
        tool("track_parcel", "Where a parcel is.", carrier="string", tracking_number="string"),
    ]
    r = await actor.post("/v1/toolsets", json={"tools": tools})
    assert r.status_code == 201, r.text
    stored = (await actor.get(f"/v1/toolsets/{r.json()['id']}")).json()
    assert stored["output_schemas"] == r.json()["output_schemas"]
    names = [t["function"]["name"] for t in tools]
    assert stored["inferred_output_schemas"] == sorted(names)
    for definition in tools:
        name = definition["function"]["name"]
        schema = stored["output_schemas"][name]
        Draft202012Validator.check_schema(schema)
        arguments = set(definition["function"]["parameters"]["properties"])
        assert arguments < set(schema["properties"]), (name, schema)  # something found
        assert schema["additionalProperties"] is False
        assert set(schema["required"]) == set(schema["properties"])
    call = {
        "id": "c",
        "type": "function",
        "function": {"name": "get_country_facts", "arguments": '{"country": "Kenya"}'},
    }
    answer = await actor.post(
        "/v1/tool_calls", json={"toolset_id": stored["id"], "tool_calls": [call]}
    )
    assert answer.status_code == 200, answer.text
    value = orjson.loads(answer.json()["messages"][0]["content"])
    Draft202012Validator(stored["output_schemas"]["get_country_facts"]).validate(value)
