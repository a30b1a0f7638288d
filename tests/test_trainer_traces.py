"""AutoAgent / AutoTraj end to end: generation, bad input, resumption, repair, export, TRL.

The unit layer runs the real ToolActor app in process (``httpx.ASGITransport``) over a grounded
double of the LLM backend; the slow layer runs the real ToolMaker and ToolActor processes on
free ports sharing a real Redis, with the packaged model as teacher and repairer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import SEARCH_TOOL, free_port, start_app
from tests.doubles import ScriptedBackend
from tests.test_trainer_grammar import CASES
from toolsim.llm.base import Generation, GenerationRequest
from toolsim_trainer.agent import AgentLimits
from toolsim_trainer.clients import ActorClient, MakerClient
from toolsim_trainer.data import Passage, QuestionRow, load_rows
from toolsim_trainer.grammar import AssistantTurn, ToolCallItem, render_turn
from toolsim_trainer.jsonl import JsonlError, JsonlWriter, key_by, read_jsonl
from toolsim_trainer.policy import OpenAIPolicy, Policy, PolicyOutput
from toolsim_trainer.traces import cli
from toolsim_trainer.traces.export import (
    ExportConfig,
    build_export,
    outcomes_of,
    write_export,
)
from toolsim_trainer.traces.generate import GenerateConfig, Teacher, generate
from toolsim_trainer.traces.gold import (
    NO_EVIDENCE_ANSWER,
    GoldPolicy,
    find_search_tool,
    gold_queries,
)
from toolsim_trainer.traces.records import TraceRecord
from toolsim_trainer.traces.repair import (
    RepairConfig,
    ReplayPolicy,
    run_repairs,
    split_proposal,
)
from toolsim_trainer.traces.scoring import ScoreConfig, score_record

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "context"


class GroundedBackend(ScriptedBackend):
    """A simulator double whose observation is the episode's grounding: the answer, then the
    passages (a faithful simulator, in short)."""

    async def generate(self, request: GenerationRequest) -> Generation:
        self.calls.append(request)
        system = request.messages[0]["content"] if request.messages else ""
        lines = system.splitlines()
        facts = [f"{line[8:]}." for line in lines if line.startswith("Answer: ")]
        facts += [line[2:] for line in lines if line.startswith("- ")]
        result = " ".join(facts) or "No results."
        return Generation(orjson.dumps({"result": result[:600]}).decode(), "stop", 10, 10)


class ScriptedPolicy(Policy):
    """A teacher double: per question, the text of each assistant turn in order."""

    def __init__(
        self,
        scripts: dict[str, Sequence[str]] | None = None,
        *,
        default: Sequence[str] = (),
        delay_s: float = 0.0,
    ) -> None:
        self.name = "scripted"
        self.scripts = scripts or {}
        self.default = default
        """The turns for any question without a script (a repairer's prompt is the task)."""
        self.delay_s = delay_s
        self.seen: list[list[dict[str, Any]]] = []

    async def complete(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        *,
        seed: int,
        temperature: float,
        max_tokens: int,
    ) -> PolicyOutput:
        self.seen.append(list(messages))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        turns = self.scripts.get(str(messages[1]["content"]), self.default)
        step = sum(m["role"] == "assistant" for m in messages)
        return PolicyOutput(text=turns[step], finish_reason="stop")


def call(query: str, name: str = "search", **extra: Any) -> str:
    return render_turn(
        AssistantTurn(f"I search {query}.", (ToolCallItem(name, {"query": query, **extra}),))
    )


def answer(text: str, think: str = "The result says so.") -> str:
    return render_turn(AssistantTurn(think, answer=text))


ROWS = [
    QuestionRow(
        "q1",
        "What is the capital of France?",
        ("Paris",),
        (Passage("France", "Paris is the capital of France."),),
    ),
    QuestionRow(
        "q2",
        "Who wrote Hamlet?",
        ("William Shakespeare", "Shakespeare"),
        (Passage("Hamlet", "Hamlet is a tragedy written by William Shakespeare."),),
    ),
    QuestionRow("q3", "What colour is the sky?", ("blue",)),  # no grounding
]
GOOD = {
    ROWS[0].question: [call("capital of France"), answer("Paris")],
    ROWS[1].question: [call("Hamlet author"), answer("William Shakespeare")],
    ROWS[2].question: [call("sky colour"), answer("green")],
}


class Actor:
    """The ToolActor app in process, its ActorClient, and a registered search toolset."""

    def __init__(self, client: ActorClient, toolset_id: str, http: httpx.AsyncClient) -> None:
        self.client, self.toolset_id, self.http = client, toolset_id, http

    async def tool_calls(self) -> float:
        text = (await self.http.get("/metrics")).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("toolsim_requests_total") and 'route="/v1/tool_calls"' in line
        )


@pytest.fixture
async def actor() -> AsyncIterator[Actor]:
    _app, http, life = await start_app(GroundedBackend())
    client = ActorClient("http://actor", http=http, retries=0)
    toolset_id = await client.register_toolset({"tools": [SEARCH_TOOL]})
    try:
        yield Actor(client, toolset_id, http)
    finally:
        await http.aclose()
        await life.__aexit__(None, None, None)


def config(out: Path, toolset_id: str | None, **overrides: Any) -> GenerateConfig:
    options: dict[str, Any] = {
        "out": out,
        "toolset_id": toolset_id,
        "concurrency": 2,
        "progress": False,
        "limits": AgentLimits(max_turns=4, max_tool_calls=3),
    }
    return GenerateConfig(**{**options, **overrides})


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# ---------------------------------------------------------------------------- jsonl


def test_jsonl_drops_a_cut_short_last_line_and_keeps_whole_ones(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    with JsonlWriter(path, key=key_by("id", "k")) as w:
        w.write({"id": "a", "k": 0})
        w.write({"id": "b", "k": 0})
        with pytest.raises(JsonlError, match="already written"):
            w.write({"id": "a", "k": 0})
    with path.open("ab") as f:
        f.write(b'{"id": "c", "k"')  # the interruption
    with JsonlWriter(path, key=key_by("id", "k")) as w:
        assert w.dropped_bytes == len(b'{"id": "c", "k"')
        assert w.done == {("a", 0), ("b", 0)} and ("c", 0) not in w
        w.write({"id": "c", "k": 0})
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c"]
    with path.open("ab") as f:
        f.write(b'{"id": "d", "k": 0}')  # whole, only the newline lost
    with JsonlWriter(path, key=key_by("id", "k")) as w:
        assert w.dropped_bytes == 0 and ("d", 0) in w
        w.write({"id": "e", "k": 0})
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c", "d", "e"]


def test_jsonl_corruption_before_the_last_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": 1}\nnot json\n{"id": 2}\n')
    with pytest.raises(JsonlError, match=r"t\.jsonl:2: not valid JSON"):
        JsonlWriter(path).open()
    assert path.read_text() == '{"id": 1}\nnot json\n{"id": 2}\n'  # nothing lost


# ---------------------------------------------------------------------------- generate


async def test_generate_writes_traces_with_their_metadata(actor: Actor, tmp_path: Path) -> None:
    teacher = Teacher("llm", ScriptedPolicy(GOOD))
    cfg = config(tmp_path / "traces.jsonl", actor.toolset_id)
    summary = await generate(ROWS, teacher, actor.client, None, cfg)
    assert (summary.written, summary.failed, summary.skipped) == (3, 0, 0)
    lines = read_jsonl(cfg.out)
    assert [(r["id"], r["candidate"]) for r in sorted(lines, key=lambda r: r["id"])] == [
        ("q1", 0), ("q2", 0), ("q3", 0),
    ]  # fmt: skip
    first = next(r for r in lines if r["id"] == "q1")
    assert first["question"] == ROWS[0].question and first["answers"] == ["Paris"]
    assert first["toolset_id"] == actor.toolset_id and first["episode_id"].startswith("ep_")
    assert first["teacher"]["kind"] == "llm" and first["teacher"]["name"] == "scripted"
    assert first["status"] == "answered" and first["prediction"] == "Paris"
    assert isinstance(first["seed"], int) and len(first["turn_latencies"]) == 2
    assert first["seeds"] == {"episode": first["seed"], "teacher": first["seed"], "maker": None}
    assert {"policy_s", "tools_s", "tokens"} <= set(first["turn_latencies"][0])
    # the observation is the grounded one, received over HTTP through the episode
    tool_message = first["messages"][3]
    assert tool_message["role"] == "tool" and "Paris is the capital" in tool_message["content"]
    assert first["grounding"]["passages"][0]["title"] == "France"
    assert await actor.tool_calls() == 3  # one POST /v1/tool_calls per trace
    table = summary.table()
    assert "traces written             3" in table and "grammar-valid share        1.000" in table


async def test_generate_resumes_without_duplicates_after_an_interruption(
    actor: Actor, tmp_path: Path
) -> None:
    teacher = Teacher("llm", ScriptedPolicy(GOOD))
    cfg = config(tmp_path / "traces.jsonl", actor.toolset_id, candidates=2)
    await generate(ROWS[:2], teacher, actor.client, None, cfg)
    data = cfg.out.read_bytes()
    cfg.out.write_bytes(data[: len(data) - 40])  # the last line cut short mid-write
    kept = {(r["id"], r["candidate"]) for r in read_jsonl_prefix(cfg.out)}
    assert len(kept) == 3
    summary = await generate(ROWS, teacher, actor.client, None, cfg)
    assert summary.skipped == 3 and summary.written == 3  # the cut one + q3's two candidates
    keys = [(r["id"], r["candidate"]) for r in read_jsonl(cfg.out)]
    assert len(keys) == len(set(keys)) == 6
    again = await generate(ROWS, teacher, actor.client, None, cfg)
    assert (again.written, again.skipped) == (0, 6)
    records = [TraceRecord.from_json(r) for r in read_jsonl(cfg.out)]
    seeds = {(r.id, r.candidate): r.seed for r in records}
    assert seeds[("q1", 0)] != seeds[("q1", 1)]  # candidates differ by seed


def read_jsonl_prefix(path: Path) -> list[dict[str, Any]]:
    """The whole lines of a file whose last line may be cut short."""
    return [
        json.loads(line)
        for line in path.read_text().splitlines(keepends=True)
        if line.endswith("\n")
    ]


async def test_unknown_tools_and_bad_arguments_go_back_to_the_teacher(
    actor: Actor, tmp_path: Path
) -> None:
    scripts = {
        ROWS[0].question: [
            call("capital", name="lookup"),  # no such tool
            render_turn(AssistantTurn("Again.", (ToolCallItem("search", {"query": 5}),))),
            call("capital of France"),
            answer("Paris"),
        ]
    }
    policy = ScriptedPolicy(scripts)
    cfg = config(tmp_path / "traces.jsonl", actor.toolset_id)
    summary = await generate(ROWS[:1], Teacher("llm", policy), actor.client, None, cfg)
    assert summary.written == 1
    (record,) = [TraceRecord.from_json(r) for r in read_jsonl(cfg.out)]
    assert record.status == "answered" and record.prediction == "Paris"
    assert [(o.ok, o.code) for o in record.observations] == [
        (False, "tool_not_found"), (False, "invalid_arguments"), (True, None),
    ]  # fmt: skip
    # the teacher saw each refusal as a tool message with the error, and went on
    second_prompt = policy.seen[1]
    error = json.loads(second_prompt[-1]["content"])["error"]
    assert second_prompt[-1]["role"] == "tool" and error["code"] == "tool_not_found"
    score = score_record(record)
    assert score.dimensions["tool_calls"].value == pytest.approx(1 / 3)
    assert "invalid_tool_call" in score.reasons and not score.kept


@pytest.mark.parametrize(("text", "rule"), [(t, r) for t, r, _ in CASES])
async def test_each_grammar_break_is_recorded_and_scored(
    actor: Actor, tmp_path: Path, text: str, rule: str
) -> None:
    scripts = {ROWS[0].question: [text]}
    cfg = config(tmp_path / "traces.jsonl", actor.toolset_id)
    summary = await generate(
        ROWS[:1], Teacher("llm", ScriptedPolicy(scripts)), actor.client, None, cfg
    )
    assert summary.written == 1 and summary.failed == 0
    (record,) = [TraceRecord.from_json(r) for r in read_jsonl(cfg.out)]
    assert record.status == "grammar_error" and record.grammar_error is not None
    assert record.grammar_error.rule == rule and record.raw_turns == [text]
    score = score_record(record)
    assert score.dimensions["grammar"].value == 0.0
    assert score.dimensions["grammar"].detail["error"] == rule
    assert score.reasons[0] == f"grammar:{rule}" and not score.kept


async def test_toolactor_unreachable_marks_units_failed_and_a_rerun_resumes(
    actor: Actor, tmp_path: Path
) -> None:
    teacher = Teacher("llm", ScriptedPolicy(GOOD))
    cfg = config(tmp_path / "traces.jsonl", actor.toolset_id)
    async with ActorClient(dead_url(), retries=1, backoff_s=0.01) as down:
        summary = await generate(ROWS[:2], teacher, down, None, cfg)
    assert (summary.written, summary.failed) == (0, 2)
    assert summary.failures == {"toolactor": 2}
    failures = read_jsonl(cfg.failures_path)
    assert {f["id"] for f in failures} == {"q1", "q2"}
    assert all("failed after 2 tries" in f["reason"] for f in failures)
    assert read_jsonl(cfg.out) == []
    summary = await generate(ROWS[:2], teacher, actor.client, None, cfg)  # the actor is back
    assert (summary.written, summary.failed) == (2, 0)


@pytest.mark.parametrize("failure", ["503", "timeout"])
async def test_tools_down_mid_trace_fail_the_unit(
    actor: Actor, tmp_path: Path, failure: str
) -> None:
    """The episode opens, then the ToolActor stops answering (503s, or no answer in time):
    bounded retries, then the unit fails with the reason, not the run."""
    teacher = Teacher("llm", ScriptedPolicy(GOOD))
    cfg = config(tmp_path / "traces.jsonl", actor.toolset_id)
    inner = actor.http._transport

    class Failing(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.tool_requests = 0

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path != "/v1/tool_calls":
                return await inner.handle_async_request(request)
            self.tool_requests += 1
            if failure == "timeout":
                raise httpx.ReadTimeout("no answer in time", request=request)
            return httpx.Response(503, json={"error": {"code": "backend_unavailable"}})

    transport = Failing()
    async with httpx.AsyncClient(transport=transport, base_url="http://actor") as http:
        flaky = ActorClient("http://actor", http=http, retries=2, backoff_s=0.01)
        summary = await generate(ROWS[:2], teacher, flaky, None, cfg)
    assert summary.failed == 2 and summary.failures == {"tools": 2} and summary.written == 0
    assert transport.tool_requests == 2 * 3  # each unit: one try and two retries
    reasons = [f["reason"] for f in read_jsonl(cfg.failures_path)]
    assert all("tool_unavailable" in r for r in reasons)


async def test_toolmaker_unreachable_marks_units_failed(actor: Actor, tmp_path: Path) -> None:
    teacher = Teacher("llm", ScriptedPolicy(GOOD))
    cfg = config(tmp_path / "traces.jsonl", None)
    async with MakerClient(dead_url(), retries=1, backoff_s=0.01) as maker:
        summary = await generate(ROWS[:2], teacher, actor.client, maker, cfg)
    assert summary.failed == 2 and summary.failures == {"toolmaker": 2}


async def test_teacher_unreachable_or_too_slow_marks_units_failed(
    actor: Actor, tmp_path: Path
) -> None:
    down = OpenAIPolicy(dead_url() + "/v1", "m", retries=1)
    cfg = config(tmp_path / "a.jsonl", actor.toolset_id)
    summary = await generate(ROWS[:1], Teacher("llm", down), actor.client, None, cfg)
    await down.aclose()
    assert summary.failed == 1 and summary.failures == {"policy": 1}
    assert "ConnectError" in read_jsonl(cfg.failures_path)[0]["reason"]
    slow = ScriptedPolicy(GOOD, delay_s=5.0)
    cfg = config(tmp_path / "b.jsonl", actor.toolset_id, unit_timeout_s=0.2)
    summary = await generate(ROWS[:2], Teacher("llm", slow), actor.client, None, cfg)
    assert summary.failed == 2 and summary.failures == {"timeout": 2}


async def test_a_resumed_file_must_be_the_same_teachers(actor: Actor, tmp_path: Path) -> None:
    cfg = config(tmp_path / "traces.jsonl", actor.toolset_id)
    await generate(ROWS[:1], Teacher("llm", ScriptedPolicy(GOOD)), actor.client, None, cfg)
    with pytest.raises(ValueError, match="write this teacher's traces to another file"):
        await generate(ROWS, Teacher("gold"), actor.client, None, cfg)


def test_rows_missing_fields_name_file_and_line(tmp_path: Path, capsys: Any) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text('{"question": "a?", "answer": "b"}\n{"question": "c?"}\n')
    args = parse(["generate", "--data", str(data), "--out", str(tmp_path / "o.jsonl")])
    assert cli.generate.command(args) == 2
    assert f"{data}:2: missing field 'answer'" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(required=True)
    for name in ("generate", "score", "repair", "export"):
        command = getattr(cli, name)
        p = sub.add_parser(name)
        command.configure_parser(p)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- gold


async def test_gold_bootstrap_searches_each_hop_and_answers_from_evidence(
    actor: Actor, tmp_path: Path
) -> None:
    musique = load_rows(DATA / "musique_train.json", limit=2)
    no_evidence = QuestionRow("q9", "Who painted the ceiling?", ("Michelangelo",))  # ungrounded
    cfg = config(tmp_path / "gold.jsonl", actor.toolset_id)
    summary = await generate([*musique, no_evidence], Teacher("gold"), actor.client, None, cfg)
    assert summary.written == 3
    records = {r["id"]: TraceRecord.from_json(r) for r in read_jsonl(cfg.out)}
    first = records[musique[0].id]
    assert first.teacher["kind"] == "gold" and first.status == "answered"
    queries = [c.arguments["query"] for c in first.trace.tool_calls]
    assert queries == list(musique[0].subquestions)  # one search per hop, "#1" resolved
    assert first.prediction == musique[0].answer  # the grounded observation holds it
    assert score_record(first).kept
    second = records[musique[1].id]
    assert len(second.trace.tool_calls) == 3  # four hops, capped by max_tool_calls
    missing = records["q9"]
    assert missing.prediction == NO_EVIDENCE_ANSWER
    assert "do not contain the answer" in missing.trace.assistant_turns[-1].think
    assert not score_record(missing).kept


def test_gold_fills_the_other_required_arguments() -> None:
    strict = {
        "type": "function",
        "function": {
            "name": "search",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "top_k": {"type": ["integer", "null"]}},
                "required": ["query", "top_k"],
                "additionalProperties": False,
            },
        },
    }
    assert find_search_tool([strict]).call("x").arguments == {"query": "x", "top_k": None}
    with pytest.raises(ValueError, match="search-like tool"):
        GoldPolicy(
            ROWS[0],
            [{"type": "function", "function": {"name": "n", "parameters": {}}}],
            max_calls=2,
        )


# ---------------------------------------------------------------------------- repair, export


def test_a_proposal_loses_the_observations_it_invented() -> None:
    text = (
        call("capital of France")
        + "\n<tool_response>\nBerlin is the capital.\n</tool_response>\n"
        + answer("Berlin")
        + "<|im_end|>"
    )
    proposal = split_proposal(text)
    assert proposal.invented_observations == 1
    assert proposal.turns == (call("capital of France"), answer("Berlin"))


async def test_replay_runs_the_proposal_against_real_observations(actor: Actor) -> None:
    from toolsim_trainer.agent import ToolContext, run_agent

    episode = await actor.client.create_episode(
        actor.toolset_id, seed=1, grounding={"passages": [{"title": "F", "text": "Paris it is."}]}
    )
    context = ToolContext(actor.client, actor.toolset_id, [SEARCH_TOOL], episode)
    policy = ReplayPolicy([call("capital"), answer("Berlin")])
    result = await run_agent(policy, "Capital?", context, seed=1, limits=AgentLimits())
    assert (
        result.status == "answered" and "Paris it is." in result.trace.turns[1].responses[0].content
    )  # type: ignore[union-attr]


async def repair_setup(actor: Actor, tmp_path: Path) -> tuple[list[TraceRecord], Path]:
    """Two traces: q1 kept, q2 answered wrongly (to repair)."""
    scripts = {
        ROWS[0].question: GOOD[ROWS[0].question],
        ROWS[1].question: [call("Hamlet author"), answer("Christopher Marlowe")],
    }
    cfg = config(tmp_path / "traces.jsonl", actor.toolset_id)
    await generate(ROWS[:2], Teacher("llm", ScriptedPolicy(scripts)), actor.client, None, cfg)
    return [TraceRecord.from_json(r) for r in read_jsonl(cfg.out)], cfg.out


async def test_repair_is_replayed_rescored_and_exported_for_trl(
    actor: Actor, tmp_path: Path
) -> None:
    records, _ = await repair_setup(actor, tmp_path)
    scores = {r.key: score_record(r) for r in records}
    wrong = next(r for r in records if r.id == "q2")
    assert scores[wrong.key].reasons[0] == "wrong_answer"
    # The repairer invents an observation, then answers from it: the replay drops it and uses
    # the real one, which does support the answer it gives.
    proposal = (
        call("Hamlet author")
        + "\n<tool_response>\nMade up.\n</tool_response>\n"
        + answer("William Shakespeare")
    )
    repairer = ScriptedPolicy(default=[proposal])
    out = tmp_path / "out"
    rcfg = RepairConfig(out=out / "repairs.jsonl", progress=False)
    calls_before = await actor.tool_calls()
    outcomes, failed = await run_repairs(records, scores, repairer, actor.client, rcfg)
    assert failed == 0 and len(outcomes) == 1  # only the trace that was not kept
    (outcome,) = outcomes
    assert outcome.of == wrong.key and outcome.accepted and outcome.invented_observations == 1
    assert await actor.tool_calls() == calls_before + 1  # its call was executed again
    repaired = outcome.record
    assert repaired.teacher["kind"] == "repair" and repaired.episode_id != wrong.episode_id
    assert "Made up" not in json.dumps(repaired.to_json()["messages"])
    assert "Shakespeare" in repaired.trace.turns[1].responses[0].content  # type: ignore[union-attr]
    # the repairer was shown the question, the tools, the faulty trace and its problems
    shown = repairer.seen[0]
    assert (
        '"name": "search"' in shown[0]["content"] and "Christopher Marlowe" in shown[1]["content"]
    )
    assert "wrong_answer" in shown[1]["content"]
    export = build_export(outcomes_of(records, scores, outcomes), ScoreConfig(), ExportConfig())
    assert len(export.sft) == 2 and len(export.preference) == 1
    pair = export.preference[0]
    assert [m["role"] for m in pair["prompt"]] == ["system", "user"]
    assert pair["chosen"][-1]["content"].endswith("<answer>William Shakespeare</answer>")
    assert pair["rejected"][-1]["content"].endswith("<answer>Christopher Marlowe</answer>")
    assert export.report["by_teacher"]["llm"]["kept"] == 1
    assert export.report["by_teacher"]["llm"]["repaired"] == 1
    paths = write_export(export, out)
    check_trl_loads(paths["sft"], paths["preference"])
    # resumed: nothing is repaired twice
    again, failed = await run_repairs(records, scores, repairer, actor.client, rcfg)
    assert failed == 0 and len(again) == 1 and len(repairer.seen) == 1


def check_trl_loads(sft: Path, preference: Path) -> None:
    """Both files load with datasets' json loader with the columns TRL reads."""
    from datasets import load_dataset

    sft_set = load_dataset("json", data_files=str(sft), split="train")
    assert set(sft_set.column_names) == {"messages", "tools"}
    assert isinstance(json.loads(sft_set[0]["tools"]), list)
    calls = [m for m in sft_set[0]["messages"] if m.get("tool_calls")]
    assert isinstance(calls[0]["tool_calls"][0]["function"]["arguments"], dict)
    pref = load_dataset("json", data_files=str(preference), split="train")
    assert {"prompt", "chosen", "rejected"} <= set(pref.column_names)


async def test_a_repair_that_is_not_better_is_not_accepted(actor: Actor, tmp_path: Path) -> None:
    records, _ = await repair_setup(actor, tmp_path)
    scores = {r.key: score_record(r) for r in records}
    repairer = ScriptedPolicy(default=["no think, no grammar"])
    rcfg = RepairConfig(out=tmp_path / "r" / "repairs.jsonl", progress=False)
    (outcome,), _ = await run_repairs(records, scores, repairer, actor.client, rcfg)
    assert not outcome.accepted and outcome.verdict == "not_better"
    assert outcome.record.grammar_error is not None
    assert outcome.record.grammar_error.rule == "missing_think"


async def test_repairer_unreachable_fails_the_repair_and_a_rerun_retries(
    actor: Actor, tmp_path: Path
) -> None:
    records, _ = await repair_setup(actor, tmp_path)
    scores = {r.key: score_record(r) for r in records}
    down = OpenAIPolicy(dead_url() + "/v1", "m", retries=0)
    rcfg = RepairConfig(out=tmp_path / "r" / "repairs.jsonl", progress=False)
    outcomes, failed = await run_repairs(records, scores, down, actor.client, rcfg)
    await down.aclose()
    assert (outcomes, failed) == ([], 1)
    assert read_jsonl(rcfg.failures_path)[0]["reason"].startswith("policy:")
    repairer = ScriptedPolicy(default=[answer("William Shakespeare")])
    outcomes, failed = await run_repairs(records, scores, repairer, actor.client, rcfg)
    assert failed == 0 and len(outcomes) == 1


async def test_score_and_export_commands(actor: Actor, tmp_path: Path, capsys: Any) -> None:
    _, traces = await repair_setup(actor, tmp_path)
    scores = tmp_path / "scores.jsonl"
    assert cli.score.command(parse(["score", "--traces", str(traces), "--out", str(scores)])) == 0
    printed = capsys.readouterr().out
    assert "llm: 2 traces, 1 kept, 1 to repair, 0 set aside" in printed
    assert "wrong_answer: 1" in printed
    assert [s["kept"] for s in read_jsonl(scores)] in ([True, False], [False, True])
    out = tmp_path / "out"
    assert (
        cli.export.command(parse(["export", "--traces", str(traces), "--out-dir", str(out)])) == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["by_teacher"]["llm"]["rejected_by_reason"] == {"wrong_answer": 1}
    assert len(read_jsonl(out / "sft.jsonl")) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    assert cli.score.command(parse(["score", "--traces", str(bad)])) == 2
    assert f"{bad}:1: missing field" in capsys.readouterr().err


# ---------------------------------------------------------------------------- end to end


HOTPOT = DATA / "hotpotqa_train.json"
E2E_ROWS = (0, 3, 5, 7)
"""HotpotQA rows whose gold bootstrap trace the 135M simulator grounds well on the simple search
tool below (measured: 6 of the first 10 rows kept, these four among them)."""
SIMPLE_SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search Wikipedia and return the passage that answers the query.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
}
"""A hand-written toolset registered through the ToolMaker. Its default ``{"result": text}``
output is one the 135M simulator fills from the grounding passages; on the ToolMaker's
generated ``search`` (``results: [{title, text, score}]``) it keeps 2 of 10 gold traces."""


def hotpot_subset(path: Path, indexes: Sequence[int]) -> Path:
    rows = json.loads(HOTPOT.read_text())
    path.write_text(json.dumps([rows[i] for i in indexes]))
    return path


def observations_served(actor_url: str) -> float:
    """Observations the ToolActor returned (all sources), from its ``/metrics``."""
    from toolsim_trainer.clients import parse_prometheus

    samples = parse_prometheus(httpx.get(f"{actor_url}/metrics", timeout=10).text)
    return sum(v for k, v in samples.items() if k.startswith("toolsim_observations_total{"))


@pytest.mark.slow
@pytest.mark.redis
def test_end_to_end_with_the_packaged_model_through_real_services(
    tmp_path: Path, redis_server: Any
) -> None:
    """Teacher and repairer = the packaged model; ToolMaker and ToolActor = real processes
    sharing a real Redis; the data sets go into TRL's SFTTrainer and RewardTrainer."""
    from tests.conftest import packaged_model_dir
    from toolsim_trainer.services import ServiceProcess

    model_dir = packaged_model_dir()
    env = {
        "TOOLSIM_REDIS_URL": redis_server.url,
        "TOOLSIM_EMBEDDED_THREADS": "1",
        "TOOLSIM_MAX_TOKENS": "192",  # bounds a looping simulation
    }
    llm, gold, made = tmp_path / "llm.jsonl", tmp_path / "gold.jsonl", tmp_path / "made.jsonl"
    out = tmp_path / "out"
    data = hotpot_subset(tmp_path / "rows.json", E2E_ROWS)
    limits = ["--max-turns", "3", "--max-tool-calls", "2"]
    with (
        ServiceProcess("toolmaker", env=env, log_path=tmp_path / "maker.log") as maker,
        ServiceProcess("toolactor", env=env, log_path=tmp_path / "actor.log") as actor,
    ):
        # the text default, not an inferred schema: the gold rows above were measured on it
        body = {"tools": [SIMPLE_SEARCH], "infer_output_schemas": False}
        registered = httpx.post(f"{maker.url}/v1/toolsets", json=body)
        assert registered.status_code == 201, registered.text
        toolset_id = registered.json()["id"]  # registered on the ToolMaker, served by the ToolActor
        urls = ["--actor-url", actor.url, "--maker-url", maker.url, "--no-progress"]
        named = ["--data", str(data), "--toolset-id", toolset_id, *limits, *urls]
        local = ["--teacher", "local", "--teacher-threads", "1", "--max-tokens", "64"]
        args = parse(["generate", *named, *local, "--out", str(llm), "--concurrency", "4"])
        assert cli.generate.command(args) == 0
        gold_args = ["--teacher", "gold", "--out", str(gold), "--concurrency", "4"]
        assert cli.generate.command(parse(["generate", *named, *gold_args])) == 0
        # one question through the ToolMaker's own generation (the question is the task)
        task = ["--data", str(data), "--limit", "1", *limits, *urls, "--teacher", "gold"]
        assert cli.generate.command(parse(["generate", *task, "--out", str(made)])) == 0
        repair = [
            "repair", "--traces", str(llm), str(gold), str(made), "--out-dir", str(out),
            "--repairer", "local", "--repairer-threads", "1", "--repair-max-tokens", "48",
            "--actor-url", actor.url, *limits, "--concurrency", "8", "--no-progress",
        ]  # fmt: skip
        assert cli.repair.command(parse(repair)) == 0
        served = observations_served(actor.url)
    records = [TraceRecord.from_json(r) for p in (llm, gold, made) for r in read_jsonl(p)]
    repairs = read_jsonl(out / "repairs.jsonl")
    assert sorted(r.teacher_kind for r in records) == ["gold"] * 5 + ["llm"] * 4
    (generated,) = [r for r in records if r.toolset_id != toolset_id]
    assert generated.toolset_id and generated.observations  # the ToolMaker's toolset, called
    assert sum(len(r.observations) for r in records if r.teacher_kind == "gold") == 5
    # every observation a trace (or a repair's replay) received came from the ToolActor (a
    # failed simulation is an error observation, which the ToolActor does not count)
    received = [o for r in records for o in r.observations if o.ok]
    received += [o for r in repairs for o in r["record"]["observations"] if o["ok"]]
    codes = [o.code for r in records for o in r.observations]
    assert served == len(received) and len(received) >= 1, codes
    report = json.loads((out / "report.json").read_text())
    for kind, n in (("llm", 4), ("gold", 5)):
        counts = report["by_teacher"][kind]
        assert counts["traces"] == n
        assert counts["kept"] + counts["repaired"] + counts["rejected"] + counts["set_aside"] == n
    assert report["datasets"]["sft_rows"] >= 1, report
    assert report["datasets"]["preference_rows"] >= 1, report
    check_trl_loads(out / "sft.jsonl", out / "preference.jsonl")
    check_trl_trainers(model_dir, out / "sft.jsonl", out / "preference.jsonl", tmp_path)


def check_trl_trainers(model_dir: Path, sft: Path, preference: Path, tmp_path: Path) -> None:
    """SFTTrainer (assistant-only loss) and RewardTrainer take the files without conversion."""
    from datasets import load_dataset
    from trl import RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

    from toolsim_trainer.chat_template import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    sft_set = load_dataset("json", data_files=str(sft), split="train")
    sft_trainer = SFTTrainer(
        model=str(model_dir),
        args=SFTConfig(
            output_dir=str(tmp_path / "sft"), assistant_only_loss=True, max_steps=1,
            per_device_train_batch_size=1, report_to=[], max_length=2048, bf16=False,
        ),
        train_dataset=sft_set,
        processing_class=tokenizer,
    )  # fmt: skip
    row = sft_trainer.train_dataset[0]
    trained = [t for t in row["labels"] if t != -100]  # TRL folds the assistant mask in
    text = tokenizer.decode(trained)
    assert "<answer>" in text and "<tool_response>" not in text  # only the policy's own turns
    pref_set = load_dataset("json", data_files=str(preference), split="train")
    reward_trainer = RewardTrainer(
        model=str(model_dir),
        args=RewardConfig(
            output_dir=str(tmp_path / "rm"), max_steps=1, per_device_train_batch_size=1,
            report_to=[], max_length=4096, bf16=False,
        ),
        train_dataset=pref_set,
        processing_class=tokenizer,
    )  # fmt: skip
    pair = reward_trainer.train_dataset[0]
    assert len(reward_trainer.train_dataset) == len(pref_set)
    assert pair["chosen_ids"] != pair["rejected_ids"]


def test_gold_queries_leave_out_quotes_that_a_policy_would_copy_unescaped() -> None:
    """The SFT policy copies the gold query into its call's JSON string; a quoted title there
    (``\\"``) was copied without its escape and broke the call (``bad_tool_call_json``)."""
    row = QuestionRow(
        id="q",
        question='Who sang "Family Tradition", the 1979 song by a\\b?',
        answers=("Hank Williams, Jr.",),
    )
    assert gold_queries(row, 2) == ["Who sang Family Tradition , the 1979 song by a b?"]
    hops = QuestionRow(id="m", question="q", answers=("x",), subquestions=('the "A" >> B', "C"))
    assert gold_queries(hops, 1) == ["the A B"]
    call = GoldPolicy(row, [SEARCH_TOOL], max_calls=1)
    text = render_turn(
        AssistantTurn(think="t", tool_calls=(ToolCallItem("search", {"query": call.queries[0]}),))
    )
    assert '\\"' not in text and "\\\\" not in text


async def test_the_policy_reads_each_observation_cut_at_max_observation_chars(
    actor: Actor,
) -> None:
    """Traces and evaluation cut what the policy reads as GRPO's rollout does (there in tokens):
    the trace and the next prompt hold the cut text with its mark, the full observation stays
    in the tool results."""
    from toolsim_trainer.agent import TRUNCATED_MARK, ToolContext, run_agent

    row = ROWS[0]
    policy = ScriptedPolicy(GOOD)
    tools = ToolContext(actor.client, actor.toolset_id, [SEARCH_TOOL])
    limits = AgentLimits(max_turns=4, max_tool_calls=3, max_observation_chars=20)
    result = await run_agent(policy, row.question, tools, seed=0, limits=limits)
    assert result.status == "answered"
    full = result.tool_results[0].content
    assert len(full) > 20
    (response,) = result.trace.turns[1].responses  # type: ignore[union-attr]
    assert response.content == full[:20] + TRUNCATED_MARK
    seen = [m["content"] for m in policy.seen[1] if m["role"] == "tool"]
    assert seen == [full[:20] + TRUNCATED_MARK]
    whole = await run_agent(
        ScriptedPolicy(GOOD), row.question, tools, seed=0, limits=AgentLimits(max_turns=4)
    )
    assert whole.trace.turns[1].responses[0].content == full  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="max_observation_chars"):
        AgentLimits(max_observation_chars=0)
