"""Grounded observations that carry the facts: the fidelity gate, usefulness, copy schemas.

Unit tests of the pure parts (checks, roles, schemas), service tests on the scripted backend
(regeneration, flags, caching of flagged observations, every face), and a slow test on the
packaged model over real HotpotQA questions.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from jsonschema import Draft202012Validator

from tests.conftest import SEARCH_TOOL, AppClient, packaged_model_dir, tool_call
from tests.doubles import ScriptedBackend, instance
from toolsim.answers import answer_in_text
from toolsim.llm.base import Generation, GenerationRequest
from toolsim.toolsets import Tool, build_toolset
from toolsim_toolactor import ActorSettings, create_app
from toolsim_toolactor.checks import check_input, judge
from toolsim_toolactor.fidelity import (
    Facts,
    evidence_role,
    facts_of,
    fidelity_gate,
    plan_evidence,
)
from toolsim_toolactor.prompt import build_messages
from toolsim_toolactor.simulator import fixed_instance

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = {
    "type": "object",
    "properties": {
        "results": {
            "type": "array",
            "maxItems": 5,
            "items": {
                "type": "object",
                "properties": {"title": {"type": "string"}, "text": {"type": "string"}},
                "required": ["title", "text"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["results"],
    "additionalProperties": False,
}
RESULTS_WITH_URL = {  # the copy schema fixes title and text, and leaves `url` to the model
    **RESULTS,
    "properties": {
        "results": {
            **RESULTS["properties"]["results"],
            "items": {
                "type": "object",
                "properties": {
                    "title": {"type": "string"},
                    "text": {"type": "string"},
                    "url": {"type": "string"},
                },
                "required": ["title", "text", "url"],
                "additionalProperties": False,
            },
        }
    },
}
NO_TEXT_SLOT = {  # nothing to copy into: the simulator writes freely, the gate checks
    "type": "object",
    "properties": {"hits": {"type": "array", "items": {"type": "string"}}},
    "required": ["hits"],
    "additionalProperties": False,
}
GROUNDING = {
    "question": "Where was Ada Lovelace born?",
    "answer": "London",
    "passages": [
        {
            "title": "Ada Lovelace",
            "text": "Augusta Ada King was an English mathematician. She was born in London "
            "in 1815. She worked on the Analytical Engine.",
        },
        {"title": "Charles Babbage", "text": "Charles Babbage designed the Analytical Engine."},
    ],
}
SEARCH = build_toolset([SEARCH_TOOL], {"search": RESULTS}).tools["search"]


def facts(grounding: dict[str, Any] = GROUNDING) -> Facts:
    return facts_of(grounding, json.dumps(grounding, sort_keys=True))


def verdict_of(role: str, value: Any, grounding: dict[str, Any] = GROUNDING) -> dict[str, str]:
    gate = fidelity_gate(facts(grounding), role)  # type: ignore[arg-type]
    return judge((gate,), check_input(SEARCH, {"query": "q"}, value)).failures


# -- the checks on crafted observations ----------------------------------------------------


def test_a_useful_observation_must_carry_the_answer() -> None:
    present = {"results": [{"title": "Ada", "text": "She was born in London, England."}]}
    absent = {"results": [{"title": "Ada", "text": "She was born in 1815."}]}
    assert verdict_of("useful", present) == {}
    assert verdict_of("useful", absent) == {"fidelity": "answer_absent"}
    # normalised as in EM: case, punctuation and articles do not matter; whole words do
    assert verdict_of("useful", {"results": [{"title": "x", "text": "the LONDON."}]}) == {}
    assert verdict_of("useful", {"results": [{"title": "x", "text": "Londonderry"}]}) == {
        "fidelity": "answer_absent"
    }


def test_a_conflicting_stated_answer_fails_even_with_the_answer_present() -> None:
    field = {"answer": "Paris", "text": "London is a city."}
    prose = {"results": [{"title": "x", "text": "London? No: the answer is Paris."}]}
    agreeing = {"answer": "London, England", "text": "London."}
    assert verdict_of("useful", field) == {"fidelity": "conflicting_answer"}
    assert verdict_of("useful", prose) == {"fidelity": "conflicting_answer"}
    assert verdict_of("useful", agreeing) == {}
    yes_no = {**GROUNDING, "answer": "yes"}
    assert verdict_of("useful", {"answer": "No"}, yes_no) == {"fidelity": "conflicting_answer"}
    assert verdict_of("useful", {"text": "Both are cities."}, yes_no) == {}  # nothing to find


def test_an_uninformative_observation_must_not_carry_the_answer() -> None:
    assert verdict_of("uninformative", {"text": "Babbage designed an engine."}) == {}
    assert verdict_of("uninformative", {"text": "Ada was born in London."}) == {
        "fidelity": "answer_present"
    }


# -- usefulness -----------------------------------------------------------------------------


def test_roles_are_reproducible_nested_and_follow_the_level() -> None:
    f = facts()
    calls = [{"query": f"Ada Lovelace birthplace {i}"} for i in range(2000)]
    useful = {
        level: [evidence_role(SEARCH, c, f, level, seed=7) == "useful" for c in calls]
        for level in (0.0, 0.25, 0.5, 0.75, 1.0)
    }
    assert useful[1.0] == [True] * len(calls) and useful[0.0] == [False] * len(calls)
    for level in (0.25, 0.5, 0.75):
        assert abs(sum(useful[level]) / len(calls) - level) < 0.03
    # nested: a call useful at 0.25 is useful at 0.5 (a curriculum never takes facts back)
    assert all(hi for lo, hi in zip(useful[0.25], useful[0.5], strict=True) if lo)
    again = [evidence_role(SEARCH, c, f, 0.5, seed=7) == "useful" for c in calls]
    other_seed = [evidence_role(SEARCH, c, f, 0.5, seed=8) == "useful" for c in calls]
    assert again == useful[0.5] and other_seed != useful[0.5]


def test_only_relevant_calls_of_retrieval_tools_carry_evidence() -> None:
    f = facts()
    calculator = build_toolset(
        [
            {
                "type": "function",
                "function": {"name": "calculator", "parameters": {"type": "object"}},
            }
        ]
    ).tools["calculator"]
    assert evidence_role(SEARCH, {"query": "Ada Lovelace"}, f, 1.0, 0) == "useful"
    assert evidence_role(SEARCH, {"query": "stock prices Tokyo"}, f, 1.0, 0) is None
    assert evidence_role(calculator, {"expression": "Ada"}, f, 1.0, 0) is None
    marked = build_toolset([SEARCH_TOOL], retrieval={"search": False}).tools["search"]
    assert evidence_role(marked, {"query": "Ada Lovelace"}, f, 1.0, 0) is None


# -- what the decoder is held to ------------------------------------------------------------


def test_copy_schemas_hold_the_excerpts_and_stay_inside_the_tool_schema() -> None:
    useful = plan_evidence(SEARCH, facts(), "useful")
    assert useful.copied
    items = useful.schema["properties"]["results"]["prefixItems"]
    assert [i["properties"]["title"]["const"] for i in items] == ["Ada Lovelace"]
    assert items[0]["properties"]["text"]["const"] == "She was born in London in 1815."
    uninformative = plan_evidence(SEARCH, facts(), "uninformative")
    texts = [
        i["properties"]["text"]["const"]
        for i in uninformative.schema["properties"]["results"]["prefixItems"]
    ]
    assert texts and not any("London" in t for t in texts)
    for plan in (useful, uninformative):  # the one instance the decoder can write is valid
        instance = {
            "results": [
                {k: v["const"] for k, v in i["properties"].items()}
                for i in plan.schema["properties"]["results"]["prefixItems"]
            ]
        }
        Draft202012Validator(RESULTS).validate(instance)
    free = plan_evidence(
        build_toolset([SEARCH_TOOL], {"search": NO_TEXT_SLOT}).tools["search"], facts(), "useful"
    )
    assert not free.copied
    assert free.schema["properties"]["hits"]["minItems"] == 1
    assert free.schema["properties"]["hits"]["items"]["maxLength"] == 160


def search_with(schema: dict[str, Any]) -> Tool:
    return build_toolset([SEARCH_TOOL], {"search": schema}).tools["search"]


def test_a_copy_schema_with_nothing_left_to_choose_fixes_the_whole_observation() -> None:
    for role in ("useful", "uninformative"):
        plan = plan_evidence(SEARCH, facts(), role)  # type: ignore[arg-type]
        (fixed,) = fixed_instance(plan.schema) or pytest.fail("the copy schema fixes it all")
        # what a constrained decoder is forced to write (the double writes consts verbatim)
        assert orjson.dumps(fixed) == orjson.dumps(instance(plan.schema, seed=7))
        assert list(fixed["results"][0]) == ["title", "text"]  # the schema's key order
        Draft202012Validator(RESULTS).validate(fixed)
    left_free = [
        plan_evidence(search_with(RESULTS_WITH_URL), facts(), "useful").schema,  # url is free
        plan_evidence(search_with(NO_TEXT_SLOT), facts(), "useful").schema,  # nothing copied
        {"type": "object", "properties": {"a": {"const": 1}}, "required": ["a"]},  # open
        {"type": "object", "properties": {"a": {"const": 1}}, "additionalProperties": False},
        {"type": "array", "prefixItems": [{"const": 1}], "minItems": 1},  # more items allowed
        {"type": "array", "prefixItems": [{"const": 1}], "items": False},  # may be empty
        {"anyOf": [{"const": 1}, {"const": 2}]},
    ]
    assert [fixed_instance(schema) for schema in left_free] == [None] * 7
    assert fixed_instance({"type": "array", "prefixItems": [], "items": False}) == ([],)


# -- through the service (scripted backend) -------------------------------------------------


class EchoBackend(ScriptedBackend):
    """Writes what the schema forces, else ``texts`` (cycling): a model that copies nothing."""

    def __init__(self, texts: list[str]) -> None:
        super().__init__()
        self.texts = texts

    async def generate(self, request: GenerationRequest) -> Generation:
        if "hits" in (request.json_schema or {}).get("properties", {}):
            self.calls.append(request)
            text = self.texts[(len(self.calls) - 1) % len(self.texts)]
            return Generation(orjson.dumps({"hits": [text]}).decode(), "stop", 10, 10)
        return await super().generate(request)


@pytest_asyncio.fixture
async def echo() -> AsyncIterator[tuple[AppClient, EchoBackend]]:
    backend = EchoBackend(["Babbage built engines.", "Lovelace wrote notes."])
    app = create_app(ActorSettings(), backend=backend)
    async with app.router.lifespan_context(app):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a")
        yield AppClient(app, client), backend
        await client.aclose()


async def episode(actor: AppClient, schema: dict[str, Any], **grounding: Any) -> tuple[str, str]:
    ts = await actor.http.post(
        "/v1/toolsets", json={"tools": [SEARCH_TOOL], "output_schemas": {"search": schema}}
    )
    assert ts.status_code == 201, ts.text
    ep = await actor.http.post(
        "/v1/episodes",
        json={"toolset_id": ts.json()["id"], "seed": 3, "grounding": {**GROUNDING, **grounding}},
    )
    assert ep.status_code == 201, ep.text
    return ts.json()["id"], ep.json()["episode_id"]


def search_call(toolset: str, episode_id: str, query: str = "Ada Lovelace") -> dict[str, Any]:
    call = tool_call("search", orjson.dumps({"query": query}).decode())
    return {"toolset_id": toolset, "episode_id": episode_id, "tool_calls": [call]}


def metric(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


async def test_a_useful_call_copies_the_evidence_and_is_cached_as_a_pass(
    echo: tuple[AppClient, EchoBackend],
) -> None:
    actor, backend = echo
    ts, ep = await episode(actor, RESULTS_WITH_URL)  # a free field: the model is called
    r = await actor.http.post("/v1/tool_calls", json=search_call(ts, ep))
    assert r.status_code == 200, r.text
    info = r.json()["observations"][0]
    assert "flags" not in info and "fidelity" not in info
    assert "London" in r.json()["messages"][0]["content"]
    prompt = backend.calls[-1].messages[0]["content"]
    assert prompt.startswith("Known facts") and "She was born in London in 1815." in prompt
    assert "Answer: London" in prompt
    again = await actor.http.post("/v1/tool_calls", json=search_call(ts, ep))
    assert again.json()["observations"][0]["source"] == "cache"


async def test_a_failing_observation_is_regenerated_then_flagged_and_replayed_flagged(
    echo: tuple[AppClient, EchoBackend],
) -> None:
    actor, backend = echo
    ts, ep = await episode(actor, NO_TEXT_SLOT)
    r = await actor.http.post("/v1/tool_calls", json=search_call(ts, ep))
    assert r.status_code == 200, r.text
    info = r.json()["observations"][0]
    assert info["flags"] == ["fidelity"] and info["fidelity"] == {"reason": "answer_absent"}
    assert [c.seed for c in backend.calls] == [3, 3 + 1_000_003, 3 + 2 * 1_000_003]
    # the last schema-valid generation is returned
    assert json.loads(r.json()["messages"][0]["content"]) == {"hits": ["Babbage built engines."]}
    metrics = (await actor.http.get("/metrics")).text
    sample = 'toolsim_check_failures_total{flag="fidelity",reason="answer_absent"}'
    assert metric(metrics, sample) == 3
    assert metric(metrics, 'toolsim_flagged_observations_total{flag="fidelity"}') == 1
    # replayed from the cache, still flagged: never served as a pass
    again = await actor.http.post("/v1/tool_calls", json=search_call(ts, ep))
    assert again.json()["observations"][0]["source"] == "cache"
    assert again.json()["observations"][0]["fidelity"] == {"reason": "answer_absent"}
    assert len(backend.calls) == 3
    # the REST face says the same in headers
    rest = await actor.http.post(
        f"/v1/toolsets/{ts}/tools/search",
        json={"query": "Ada Lovelace"},
        headers={"X-Episode-Id": ep},
    )
    assert rest.headers["x-toolsim-flags"] == "fidelity"
    assert rest.headers["x-toolsim-fidelity"] == "answer_absent"


async def test_the_trainer_reads_the_flag_from_observations(
    echo: tuple[AppClient, EchoBackend],
) -> None:
    from toolsim_trainer.clients import ActorClient, ToolCallItem

    actor, _ = echo
    ts, ep = await episode(actor, NO_TEXT_SLOT)
    client = ActorClient("http://a", http=actor.http, retries=0)
    (result,) = await client.call_tools(
        ts, [ToolCallItem("search", {"query": "Ada Lovelace"})], episode_id=ep
    )
    assert result.ok and result.flags == ("fidelity",)


async def test_usefulness_zero_keeps_the_answer_out(echo: tuple[AppClient, EchoBackend]) -> None:
    actor, backend = echo
    ts, ep = await episode(actor, RESULTS_WITH_URL, usefulness=0.0)
    r = await actor.http.post("/v1/tool_calls", json=search_call(ts, ep))
    content = r.json()["messages"][0]["content"]
    assert "flags" not in r.json()["observations"][0]
    assert "London" not in content and "Babbage" in content
    prompt = backend.calls[-1].messages[0]["content"]
    assert "London" not in prompt and "must not answer the question" in prompt


async def test_an_unrelated_query_in_a_grounded_episode_is_not_held_to_the_facts(
    echo: tuple[AppClient, EchoBackend],
) -> None:
    actor, backend = echo
    ts, ep = await episode(actor, NO_TEXT_SLOT)
    r = await actor.http.post("/v1/tool_calls", json=search_call(ts, ep, "tokyo stock prices"))
    assert "flags" not in r.json()["observations"][0]
    assert len(backend.calls) == 1


# -- the packaged model ---------------------------------------------------------------------


def hotpot_groundings(n: int) -> list[dict[str, Any]]:
    path = DATA / "context" / "hotpotqa_train.json"
    if not path.is_file():
        pytest.fail(f"{path} is missing: the shared data sets live in ../shared/data")
    out = []
    for row in json.loads(path.read_text()):
        if row["answer"].lower() in ("yes", "no"):
            continue
        titles = {fact[0] for fact in row["supporting_facts"]}
        passages = [
            {"title": t, "text": "".join(s).strip()} for t, s in row["context"] if t in titles
        ]
        out.append({"question": row["question"], "answer": row["answer"], "passages": passages})
        if len(out) == n:
            return out
    return out


@pytest.mark.slow
async def test_the_packaged_model_carries_the_answer_at_1_and_keeps_it_out_at_0() -> None:
    from toolsim.llm.embedded import EmbeddedBackend

    # One thread: on a shared machine two would contend with each other and everyone else.
    backend = EmbeddedBackend(packaged_model_dir(), num_threads=1)
    app = create_app(ActorSettings(llm_timeout_s=600), backend=backend)
    async with app.router.lifespan_context(app):
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://a", timeout=600
        )
        actor = AppClient(app, http)
        found: dict[float, list[bool]] = {1.0: [], 0.0: []}
        for grounding in hotpot_groundings(3):
            # The search schema of eval and GRPO: the copy schema fixes it whole, so the observation
            # is built without decoding; the decoder writes the same bytes (next test).
            for usefulness in found:
                ts, ep = await episode(actor, RESULTS, **grounding, usefulness=usefulness)
                r = await http.post(
                    "/v1/tool_calls", json=search_call(ts, ep, grounding["question"])
                )
                assert r.status_code == 200, r.text
                Draft202012Validator(RESULTS).validate(
                    json.loads(r.json()["messages"][0]["content"])
                )
                found[usefulness].append(
                    answer_in_text([grounding["answer"]], r.json()["messages"][0]["content"])
                )
        await http.aclose()
    assert found == {1.0: [True] * 3, 0.0: [False] * 3}


@pytest.mark.slow
async def test_the_packaged_model_decodes_a_fixed_schema_to_the_shortcut_bytes() -> None:
    from toolsim.llm.embedded import EmbeddedBackend

    backend = EmbeddedBackend(packaged_model_dir(), num_threads=1)
    await backend.start()
    try:
        for grounding in (GROUNDING, *hotpot_groundings(1)):
            plan = plan_evidence(SEARCH, facts(grounding), "useful")
            built = fixed_instance(plan.schema) or pytest.fail("the copy schema fixes it all")
            request = GenerationRequest(
                messages=build_messages(SEARCH, {"query": "q"}, None, plan),
                json_schema=plan.schema,
                seed=3,
                temperature=0.7,
                max_tokens=384,
            )
            generation = await backend.generate(request)
            assert generation.finish_reason == "stop"
            # the simulator writes orjson.dumps of what it parsed, on both paths
            assert orjson.dumps(orjson.loads(generation.text)) == orjson.dumps(built[0])
    finally:
        await backend.aclose()
