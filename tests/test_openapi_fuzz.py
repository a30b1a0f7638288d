"""Both services fuzzed from their own OpenAPI documents (schemathesis, in process over ASGI,
scripted backend): the documents say what the routes accept and answer.

- every operation: no 5xx but the documented 502/503 (and the 500/504 a fault policy
  injects), every failure in the OpenAI envelope with a string ``code``, status and body as
  documented;
- the four body-taking operations: bodies drawn from the documented schema are accepted. The
  share left is what JSON Schema cannot say: a reference to something that does not exist
  (404), or a rule across fields that the field's description states (a map's keys name tools
  of the toolset, fault rates add up to at most 1, ...). Any other rejection fails;
- the links: a stateful run follows them to real toolsets and episodes.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.stateful import run_state_machine_as_test
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.conftest import SEARCH_TOOL, WEATHER_TOOL
from tests.doubles import ScriptedBackend
from toolsim.registry import MemoryRegistry
from toolsim_toolactor import ActorSettings
from toolsim_toolactor import create_app as create_actor
from toolsim_toolactor.protocol import INLINE_ONLY
from toolsim_toolmaker import MakerSettings
from toolsim_toolmaker import create_app as create_maker

EXAMPLES = 30
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # reproducible in CI
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure prints its case
    suppress_health_check=list(HealthCheck),
)
ENVELOPE_5XX = {502, 503}
INJECTED_5XX = {500: "tool_server_error", 504: "tool_timeout"}
"""What a fault policy answers on purpose (documented; see test_faults.py)."""
ACCEPTED_SHARE = 0.25
"""Least share of 2xx among bodies drawn from the documented schema, with the references a
client gets from the links (a toolset id) filled in. Before the documents described the
bodies it was 0 for every operation (no body documented: each request was an empty one).
Measured now (30 examples, derandomized): 0.33 for toolsets (most bodies break a cross-field
rule: map keys that name no tool, fault rates over 1 in total), 0.7 to 1.0 for the others.
The strong assertion is the other one: no rejection outside those rules."""
CROSS_FIELD = re.compile(
    r"^(output_schemas|stateful|modes|live_endpoints|retrieval)\..+"  # keys name tools
    r"|^faults\.(rates|latency_ms|tools)"  # rates add up to <= 1, low <= high, tools exist
    r"|^tools\[\d+\]\.function\.name$"  # names are unique in a toolset
)
"""Rejections the documents state in prose only (JSON Schema cannot relate two fields)."""
PROSE_RULES = re.compile(r"64 bits|^strict |not a valid JSON Schema")
"""Integers anywhere in a free-form JSON value fit in 64 bits; a ToolMaker tool with
``"strict": true`` has parameters in OpenAI's strict form; a schema field is a valid JSON
Schema (documented as an object: the meta-schema is not repeated in the document)."""


# -- apps --------------------------------------------------------------------------------


def _no_waits(body: Any) -> Any:
    """A fault policy's latency and timeout really wait (up to ten minutes each): the fuzzer
    draws policies, but without the waiting."""
    if isinstance(body, dict) and isinstance(body.get("faults"), dict):
        body["faults"].pop("latency_ms", None)
        body["faults"]["timeout_ms"] = 0
    return body


@pytest.fixture(scope="module")
def actor() -> Iterator[FastAPI]:
    app = create_actor(ActorSettings(), backend=ScriptedBackend())
    yield app
    asgi.shutdown_lifespans()


@pytest.fixture(scope="module")
def maker() -> Iterator[FastAPI]:
    app = create_maker(MakerSettings(), backend=ScriptedBackend(), registry=MemoryRegistry())
    yield app
    asgi.shutdown_lifespans()


def _schema(app: FastAPI, path: str = "/openapi.json") -> OpenApiSchema:
    schema = schemathesis.openapi.from_asgi(path, app)
    schema.hook("map_body")(lambda _ctx, body: _no_waits(body))
    return schema


def _toolset(app: FastAPI) -> str:
    with asgi.get_client(app) as client:
        r = client.post("/v1/toolsets", json={"tools": [WEATHER_TOOL, SEARCH_TOOL]})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


# -- checks ------------------------------------------------------------------------------


def check_envelope(response: Any, case: Any) -> None:
    """Every failure in the envelope with a string code; 5xx only where documented."""
    status = response.status_code
    if status < 400:
        return
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["code"], str) and error["code"], error
    if status >= 500:
        injected = INJECTED_5XX.get(status) == error["code"] and "faults" in (case.body or {})
        assert status in ENVELOPE_5XX or injected, (status, error)


def call_and_check(case: Any) -> Any:
    response = case.call()
    check_envelope(response, case)
    if response.status_code not in ENVELOPE_5XX and response.status_code not in INJECTED_5XX:
        case.validate_response(
            response,
            checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
        )
    else:  # documented 5xx: their body conforms too
        case.validate_response(
            response, checks=[status_code_conformance, response_schema_conformance]
        )
    return response


def _fuzz(schema: OpenApiSchema, path: str, method: str, **pinned: Any) -> Counter[str]:
    """Run ``EXAMPLES`` drawn cases; outcome per case: accepted, reference, cross_field or
    rejected (with its reason, so a failure names it)."""
    outcomes: Counter[str] = Counter()

    @FUZZ
    @given(case=schema[path][method].as_strategy(**pinned))
    def run(case: Any) -> None:
        outcomes[_outcome(call_and_check(case))] += 1

    run()
    return outcomes


def _outcome(response: Any) -> str:
    if response.status_code < 300:
        return "accepted"
    error = response.json()["error"]
    if response.status_code == 404 and error["code"].endswith("_not_found"):
        return "reference"
    if response.status_code == 400 and error["code"] == "invalid_arguments":
        return "reference"  # arguments against the tool's own parameters
    if response.status_code == 400 and CROSS_FIELD.match(error["param"] or ""):
        return "cross_field"
    if response.status_code == 400 and PROSE_RULES.search(error["message"]):
        return "cross_field"
    return f"rejected {response.status_code} {error['code']} {error['param']}: {error['message'][:120]}"


def assert_accepted(outcomes: Counter[str]) -> None:
    rejected = {k: v for k, v in outcomes.items() if k.startswith("rejected")}
    assert not rejected, f"bodies from the documented schema rejected: {rejected}"
    share = outcomes["accepted"] / sum(outcomes.values())
    assert share >= ACCEPTED_SHARE, outcomes


# -- the four body-taking operations -----------------------------------------------------


def test_toolsets_accept_documented_bodies(actor: FastAPI) -> None:
    assert_accepted(_fuzz(_schema(actor), "/v1/toolsets", "POST"))


def test_episodes_accept_documented_bodies(actor: FastAPI) -> None:
    schema, toolset_id = _schema(actor), _toolset(actor)

    @schema.hook("map_body")
    def _in_toolset(_ctx: Any, body: Any) -> Any:
        return {**body, "toolset_id": toolset_id}  # what the CreateEpisode link gives

    assert_accepted(_fuzz(schema, "/v1/episodes", "POST"))


def test_tool_calls_accept_documented_bodies(actor: FastAPI) -> None:
    """Inline tools and registered toolsets: the request's shape as documented. A call's name
    and arguments belong to its tool, so they are filled in from the toolset."""
    schema, toolset_id = _schema(actor), _toolset(actor)
    call = {"name": "get_weather", "arguments": '{"city": "Paris"}'}

    @schema.hook("map_body")
    def _real_calls(_ctx: Any, body: Any) -> Any:
        body = {k: v for k, v in body.items() if k not in ("tools", "episode_id")}
        calls = [{**c, "function": call} for c in body["tool_calls"]]
        inline_only = set(INLINE_ONLY)
        kept = {k: v for k, v in body.items() if k not in inline_only}
        return kept | {"toolset_id": toolset_id, "tool_calls": calls}

    outcomes = _fuzz(schema, "/v1/tool_calls", "POST")
    assert_accepted(outcomes)


def test_rest_tool_accepts_bodies_from_its_toolset_document(actor: FastAPI) -> None:
    """The static document can only say "object" for a tool's arguments; each toolset's own
    document has the tool's parameters, and a body drawn from it is accepted."""
    toolset_id = _toolset(actor)
    with asgi.get_client(actor) as client:
        document = client.get(f"/v1/toolsets/{toolset_id}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    schema.app = actor

    @schema.hook("map_headers")
    def _no_episode(_ctx: Any, headers: Any) -> Any:
        # an episode id is one the service made (POST /v1/episodes), never a drawn one
        return {k: v for k, v in (headers or {}).items() if k.lower() != "x-episode-id"}

    outcomes = _fuzz(schema, f"/v1/toolsets/{toolset_id}/tools/get_weather", "POST")
    assert_accepted(outcomes)
    # and through the static document, with the ids from the CallTool link
    static = _fuzz(
        _schema(actor),
        "/v1/toolsets/{toolset_id}/tools/{name}",
        "POST",
        path_parameters={"toolset_id": toolset_id, "name": "search"},
    )
    assert not {k for k in static if k.startswith("rejected")}, static


def test_toolmaker_toolsets_accept_documented_bodies(maker: FastAPI) -> None:
    assert_accepted(_fuzz(_schema(maker), "/v1/toolsets", "POST"))


# -- every operation ---------------------------------------------------------------------


def _operations(app_name: str) -> list[tuple[str, str]]:
    app = (
        create_actor(ActorSettings(), backend=ScriptedBackend())
        if app_name == "actor"
        else (create_maker(MakerSettings(), backend=ScriptedBackend()))
    )
    paths = app.openapi()["paths"]
    return [(path, method.upper()) for path, ops in paths.items() for method in ops]


@pytest.mark.parametrize(("path", "method"), _operations("actor"))
def test_toolactor_operations_answer_as_documented(actor: FastAPI, path: str, method: str) -> None:
    _fuzz(_schema(actor), path, method)


@pytest.mark.parametrize(("path", "method"), _operations("maker"))
def test_toolmaker_operations_answer_as_documented(maker: FastAPI, path: str, method: str) -> None:
    _fuzz(_schema(maker), path, method)


# -- links -------------------------------------------------------------------------------


def test_declared_links_lead_from_a_new_toolset_to_its_episode() -> None:
    """Each link's runtime expressions, evaluated on a real response, name a resource the
    target operation serves: toolset -> get, openapi, first tool, episode -> get."""
    app = create_actor(ActorSettings(), backend=ScriptedBackend())  # lifespan: to module end
    with asgi.get_client(app) as client:
        paths = client.get("/openapi.json").json()["paths"]
        links = paths["/v1/toolsets"]["post"]["responses"]["201"]["links"]
        made = client.post("/v1/toolsets", json={"tools": [WEATHER_TOOL]})
        assert made.status_code == 201, made.text
        toolset = made.json()
        assert links["GetToolset"]["parameters"] == {"toolset_id": "$response.body#/id"}
        assert (
            client.get(f"/v1/toolsets/{_pointer(toolset, links['GetToolset'])}").status_code == 200
        )
        episode_link = links["CreateEpisode"]
        assert episode_link["operationId"] == "createEpisode"
        body = {"toolset_id": _resolve(toolset, episode_link["requestBody"]["toolset_id"])}
        episode = client.post("/v1/episodes", json=body)
        assert episode.status_code == 201, episode.text
        get = paths["/v1/episodes"]["post"]["responses"]["201"]["links"]["GetEpisode"]
        episode_id = _resolve(episode.json(), get["parameters"]["episode_id"])
        assert client.get(f"/v1/episodes/{episode_id}").status_code == 200
        call = links["CallTool"]["parameters"]
        name = _resolve(toolset, call["name"])
        answered = client.post(f"/v1/toolsets/{toolset['id']}/tools/{name}", json={"city": "Oslo"})
        assert answered.status_code == 200, answered.text


def _resolve(body: dict[str, Any], expression: str) -> Any:
    """An OpenAPI ``$response.body#/json/pointer`` expression, evaluated on ``body``."""
    prefix = "$response.body#"
    assert expression.startswith(prefix), expression
    value: Any = body
    for part in expression.removeprefix(prefix).strip("/").split("/"):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def _pointer(body: dict[str, Any], link: dict[str, Any]) -> Any:
    (expression,) = link["parameters"].values()
    return _resolve(body, expression)


def test_links_reach_toolsets_and_episodes() -> None:
    """Stateful fuzzing through the links, on an app of its own (so what it draws does not
    depend on what other tests registered before it)."""
    actor = create_actor(ActorSettings(), backend=ScriptedBackend())
    schema = _schema(actor)
    reached: Counter[str] = Counter()

    class Links(schema.as_state_machine()):  # type: ignore[misc]
        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            call_and_check_response(response, case)
            if response.status_code == 200 and case.path in GETS:
                reached[case.path] += 1

    run_state_machine_as_test(
        Links,
        settings=settings(
            max_examples=60,
            stateful_step_count=8,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    # What the state machine draws varies from process to process (string hashing orders its
    # links), so only the first hop is asserted here; the whole chain, toolset -> episode ->
    # its GET, is followed link by link in test_declared_links_lead_from_a_new_toolset_...
    print("reached through links:", dict(reached))
    assert reached["/v1/toolsets/{toolset_id}"] > 0, reached


GETS = ("/v1/toolsets/{toolset_id}", "/v1/episodes/{episode_id}")


def call_and_check_response(response: Any, case: Any) -> None:
    check_envelope(response, case)
    case.validate_response(response, checks=[status_code_conformance, response_schema_conformance])
