"""The trainer's HTTP clients and agent loop against the ToolActor app (in process), and the
failure policy (refusals per call, retries with Retry-After, unreachable service)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SEARCH_TOOL, WEATHER_TOOL, free_port, start_app
from tests.doubles import ScriptedBackend
from toolsim_trainer.agent import NO_TOOLS, AgentLimits, ToolContext, run_agent
from toolsim_trainer.clients import ActorClient, ServiceUnavailableError, parse_prometheus
from toolsim_trainer.data import DatasetError, grounding_of, load_rows, split_rows
from toolsim_trainer.grammar import ToolCallItem
from toolsim_trainer.policy import Policy, PolicyError, PolicyOutput, text_messages

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
async def actor() -> AsyncIterator[tuple[ActorClient, ScriptedBackend]]:
    backend = ScriptedBackend()
    _, http, life = await start_app(backend)
    client = ActorClient("http://actor", http=http, retries=1, backoff_s=0.01)
    try:
        yield client, backend
    finally:
        await http.aclose()
        await life.__aexit__(None, None, None)


async def test_a_refused_call_is_an_error_for_that_call_only(
    actor: tuple[ActorClient, ScriptedBackend],
) -> None:
    client, backend = actor
    body = {"tools": [WEATHER_TOOL, SEARCH_TOOL], "infer_output_schemas": False}
    toolset = await client.register_toolset(body)  # both keep the fallback {"result"}
    calls = [
        ToolCallItem("get_weather", {"city": "Paris"}, id="a"),
        ToolCallItem("get_weather", {"town": "Paris"}, id="b"),  # not in the schema
        ToolCallItem("nope", {}, id="c"),
        ToolCallItem("search", {"query": "x"}, id="d"),
    ]
    results = await client.call_tools(toolset, calls)
    assert [r.tool_call_id for r in results] == ["a", "b", "c", "d"]
    assert [r.ok for r in results] == [True, False, False, True]
    assert [r.code for r in results] == [None, "invalid_arguments", "tool_not_found", None]
    assert json.loads(results[1].content)["error"]["code"] == "invalid_arguments"
    assert json.loads(results[0].content)["result"]  # a real observation
    assert len(backend.calls) == 2  # refusals cost no generation
    assert client.stats.calls == 4 and client.stats.failures == 2


async def test_episodes_carry_grounding_and_history(
    actor: tuple[ActorClient, ScriptedBackend],
) -> None:
    client, backend = actor
    # search keeps the fallback {"result"}, which the excerpt fills whole
    toolset = await client.register_toolset({"tools": [SEARCH_TOOL], "infer_output_schemas": False})
    grounding = {"question": "q?", "answer": "Bob", "passages": [{"title": "T", "text": "Bob."}]}
    episode = await client.create_episode(toolset, seed=7, grounding=grounding)
    first = await client.call_tools(
        toolset, [ToolCallItem("search", {"query": "q"})], episode_id=episode
    )
    again = await client.call_tools(
        toolset, [ToolCallItem("search", {"query": "q"})], episode_id=episode
    )
    assert again[0].source == "cache"
    stored = (await client.http.get(f"http://actor/v1/episodes/{episode}")).json()
    assert stored["seed"] == 7 and len(stored["events"]) == 2
    # the grounding reached the observation (its schema fixes it whole: no generation needed)
    assert "Bob" in first[0].content and backend.calls == []


def _flaky(statuses: list[int], seen: list[float]) -> httpx.MockTransport:
    import time

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(time.monotonic())
        status = statuses.pop(0) if statuses else 200
        if status == 200:
            body = {
                "messages": [{"role": "tool", "tool_call_id": "call_0", "content": "{}"}],
                "observations": [{"tool_call_id": "call_0", "source": "simulated"}],
            }
            return httpx.Response(200, json=body)
        return httpx.Response(status, headers={"retry-after": "0.2"}, json={"error": {}})

    return httpx.MockTransport(handler)


async def test_retries_honour_retry_after_then_succeed() -> None:
    seen: list[float] = []
    http = httpx.AsyncClient(transport=_flaky([503, 429], seen))
    client = ActorClient("http://x", http=http, retries=2, backoff_s=0.01)
    (result,) = await client.call_tools("ts", [ToolCallItem("s", {})])
    assert result.ok and len(seen) == 3
    assert seen[1] - seen[0] >= 0.19 and seen[2] - seen[1] >= 0.19  # Retry-After, not backoff
    assert client.stats.retries == 2


async def test_retries_run_out_into_tool_unavailable_observations() -> None:
    seen: list[float] = []
    http = httpx.AsyncClient(transport=_flaky([503, 503, 503], seen))
    client = ActorClient("http://x", http=http, retries=1, backoff_s=0.01)
    results = await client.call_tools("ts", [ToolCallItem("s", {}), ToolCallItem("t", {})])
    assert len(seen) == 2
    assert [r.code for r in results] == ["tool_unavailable", "tool_unavailable"]
    assert "503" in json.loads(results[0].content)["error"]["message"]


async def test_unreachable_actor_fails_fast_with_the_command() -> None:
    client = ActorClient(f"http://127.0.0.1:{free_port()}", retries=0)
    with pytest.raises(ServiceUnavailableError, match="toolsim serve toolactor"):
        await client.check()
    (result,) = await client.call_tools("ts", [ToolCallItem("s", {})])
    assert result.code == "tool_unavailable" and "ConnectError" in result.content
    await client.aclose()


def test_prometheus_samples_keep_their_labels() -> None:
    text = (
        "# HELP x_total x\n# TYPE x_total counter\n"
        'x_total{source="cache",tool="s"} 3.0\nx_total{source="simulated",tool="s"} 2.0\n'
    )
    samples = parse_prometheus(text)
    assert samples['x_total{source="cache",tool="s"}'] == 3.0
    assert samples['x_total{source="simulated",tool="s"}'] == 2.0


class ScriptedPolicy(Policy):
    """Writes the given turns in order and records what it was shown."""

    name = "scripted"

    def __init__(self, turns: list[str], fail: bool = False) -> None:
        self.turns = list(turns)
        self.seen: list[list[dict[str, Any]]] = []
        self.fail = fail

    async def complete(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        *,
        seed: int,
        temperature: float,
        max_tokens: int,
    ) -> PolicyOutput:
        if self.fail:
            raise PolicyError("teacher is down")
        self.seen.append(list(messages))
        return PolicyOutput(self.turns.pop(0), "stop", 5, 0.01)


def _call(name: str, **args: Any) -> str:
    return f"<think>look it up</think>\n<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"


async def test_agent_loop_sends_calls_and_returns_errors_to_the_policy(
    actor: tuple[ActorClient, ScriptedBackend],
) -> None:
    client, _ = actor
    toolset = await client.register_toolset({"tools": [SEARCH_TOOL]})
    episode = await client.create_episode(toolset)
    policy = ScriptedPolicy(
        [
            _call("search", q="bad"),
            _call("search", query="ok"),
            "<think>t</think><answer>Bob</answer>",
        ]
    )
    tools = ToolContext(client, toolset, [SEARCH_TOOL], episode)
    result = await run_agent(policy, "Who?", tools, seed=0, limits=AgentLimits())
    assert result.status == "answered" and result.prediction == "Bob"
    assert [r.ok for r in result.tool_results] == [False, True]
    second_prompt = policy.seen[1]
    assert second_prompt[-1]["role"] == "tool"
    assert json.loads(second_prompt[-1]["content"])["error"]["code"] == "invalid_arguments"
    assert second_prompt[-2]["tool_calls"][0]["id"] == "call_0_0"
    assert len(result.turn_latencies) == 3


async def test_agent_loop_limits_and_grammar_errors(
    actor: tuple[ActorClient, ScriptedBackend],
) -> None:
    client, _ = actor
    toolset = await client.register_toolset({"tools": [SEARCH_TOOL]})
    tools = ToolContext(client, toolset, [SEARCH_TOOL])
    forever = ScriptedPolicy([_call("search", query=str(i)) for i in range(10)])
    capped = await run_agent(forever, "q", tools, seed=0, limits=AgentLimits(max_tool_calls=3))
    assert capped.status == "budget_exhausted" and capped.tool_calls == 3
    broken = ScriptedPolicy(["the answer is <answer>Bob</answer>"])
    result = await run_agent(broken, "q", tools, seed=0, limits=AgentLimits())
    assert result.status == "grammar_error" and result.grammar_error is not None
    assert result.grammar_error.rule == "missing_think" and result.prediction == "Bob"
    down = await run_agent(
        ScriptedPolicy([], fail=True), "q", NO_TOOLS, seed=0, limits=AgentLimits()
    )
    assert down.status == "failed" and "teacher is down" in (down.failure or "")


async def test_agent_loop_marks_the_question_failed_when_tools_are_unreachable() -> None:
    client = ActorClient(f"http://127.0.0.1:{free_port()}", retries=0)
    policy = ScriptedPolicy([_call("search", query="x")])
    tools = ToolContext(client, "ts_x", [SEARCH_TOOL])
    result = await run_agent(policy, "q", tools, seed=0, limits=AgentLimits())
    assert result.status == "failed" and "tool_unavailable" in (result.failure or "")
    await client.aclose()


def test_text_mode_messages_carry_the_grammar() -> None:
    from toolsim_trainer.grammar import (
        AssistantTurn,
        ToolResponse,
        ToolTurn,
        Trace,
        trace_to_messages,
    )

    trace = Trace(
        "q",
        [
            AssistantTurn("t", (ToolCallItem("search", {"query": "x"}, "c0"),)),
            ToolTurn((ToolResponse("c0", '{"r": 1}'),)),
        ],
    )
    messages = text_messages(trace_to_messages(trace), [SEARCH_TOOL])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert '"name": "search"' in messages[0]["content"]
    assert messages[2]["content"].endswith("</tool_call>")
    assert messages[3]["content"] == '<tool_response>\n{"r": 1}\n</tool_response>'


def test_shared_datasets_load_with_grounding() -> None:
    hotpot = load_rows(DATA / "context" / "hotpotqa_train.json")
    musique = load_rows(DATA / "context" / "musique_train.json")
    evals = load_rows(DATA / "eval" / "2wiki_500.jsonl", limit=5)
    assert len(hotpot) == 100 and len(musique) == 100 and len(evals) == 5
    first = hotpot[0]
    assert first.answer == "a spirit" and {p.title for p in first.passages} == {
        "Alû",
        "Lilu (mythology)",
    }
    assert all(r.passages for r in hotpot + musique)
    stanley = next(r for r in musique if r.answer == "G. Stanley Hall")
    assert "Stanley Hall" in stanley.answers
    assert evals[0].passages == () and evals[0].source.endswith("2wiki_500.jsonl:1")
    grounding = grounding_of(first)
    assert grounding is not None and grounding["answer"] == "a spirit"
    train, val = split_rows(hotpot, 0.2, seed=3)
    assert len(val) == 20 and not {r.id for r in train} & {r.id for r in val}
    assert split_rows(hotpot, 0.2, seed=3)[1] == val  # fixed by the seed


def test_bad_rows_name_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "a?", "answer": "b"}\n\n{"question": "c?"}\n')
    with pytest.raises(DatasetError, match=r"q.jsonl:3: missing field 'answer'"):
        load_rows(path)
    path.write_text('{"answer": "b"}\n')
    with pytest.raises(DatasetError, match=r"q.jsonl:1: missing field 'question'"):
        load_rows(path)
    path.write_text('{"question": "a?", "answer": "b"}\n{oops\n')
    with pytest.raises(DatasetError, match=r"q.jsonl:2: not valid JSON"):
        load_rows(path)
    with pytest.raises(DatasetError, match="no such file"):
        load_rows(tmp_path / "missing.json")
