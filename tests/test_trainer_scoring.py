"""AutoTraj scoring: every dimension on crafted traces, in each direction, and the verdict."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import SEARCH_TOOL, WEATHER_TOOL
from toolsim_trainer.grammar import (
    AssistantTurn,
    ToolCallItem,
    ToolResponse,
    ToolTurn,
    Trace,
    render_turn,
)
from toolsim_trainer.traces.records import Observation, TraceRecord, evidence_text
from toolsim_trainer.traces.scoring import (
    SIMULATOR_FLAGGED,
    ScoreConfig,
    answer_correctness,
    consistency,
    efficiency,
    grammar_validity,
    hedging,
    is_supported,
    repeated_calls,
    repetition,
    score_record,
    tool_call_validity,
)

SEARCH = ToolCallItem("search", {"query": "capital of France"}, id="call_0_0")
THINK = AssistantTurn("I search.", (SEARCH,))
ANSWER = AssistantTurn("The result says Paris.", answer="Paris")
OBSERVATION = json.dumps({"result": "Paris is the capital of France."})


def record(
    turns: list[AssistantTurn | ToolTurn] | None = None,
    *,
    raw: list[str] | None = None,
    prediction: str | None = "Paris",
    observations: list[Observation] | None = None,
    **extra: Any,
) -> TraceRecord:
    turns = turns if turns is not None else [
        THINK, ToolTurn((ToolResponse("call_0_0", OBSERVATION),)), ANSWER,
    ]  # fmt: skip
    assistant = [t for t in turns if isinstance(t, AssistantTurn)]
    return TraceRecord(
        id="q",
        candidate=0,
        question="What is the capital of France?",
        answers=("Paris",),
        teacher={"kind": "llm", "name": "t"},
        trace=Trace("What is the capital of France?", turns),
        status="answered",
        tools=[SEARCH_TOOL],
        prediction=prediction,
        raw_turns=raw if raw is not None else [render_turn(t) for t in assistant],
        observations=observations if observations is not None else [Observation("call_0_0", True)],
        **extra,
    )


# ---------------------------------------------------------------------------- grammar


def test_grammar_is_one_when_every_turn_parses_and_the_last_answers() -> None:
    assert grammar_validity([render_turn(THINK), render_turn(ANSWER)]).value == 1.0


def test_grammar_is_half_without_an_answer_and_zero_on_a_broken_turn() -> None:
    assert grammar_validity([render_turn(THINK)]).value == 0.5
    broken = grammar_validity([render_turn(THINK), "<think>unclosed"])
    assert broken.value == 0.0 and broken.detail == {
        "error": "unclosed_think",
        "turn": 1,
        "position": 0,
    }
    assert grammar_validity([]).value == 0.0


# ---------------------------------------------------------------------------- tool calls


def test_tool_calls_valid_against_the_toolset() -> None:
    ok = tool_call_validity([SEARCH], [SEARCH_TOOL, WEATHER_TOOL])
    assert ok.value == 1.0 and ok.detail["problems"] == []
    assert tool_call_validity([], [SEARCH_TOOL]).value == 1.0


def test_unknown_tools_and_bad_arguments_lower_tool_call_validity() -> None:
    calls = [
        SEARCH,
        ToolCallItem("lookup", {"query": "x"}),
        ToolCallItem("get_weather", {"city": "Paris", "unit": "kelvin"}),  # not in the enum
        ToolCallItem("get_weather", {"town": "Paris"}),  # required missing, extra forbidden
    ]
    result = tool_call_validity(calls, [SEARCH_TOOL, WEATHER_TOOL])
    assert result.value == 0.25
    problems = result.detail["problems"]
    assert problems[0] == "lookup: unknown tool"
    assert "kelvin" in problems[1] and problems[2].startswith("get_weather:")


# ---------------------------------------------------------------------------- correctness


def test_correctness_is_f1_against_every_gold_answer() -> None:
    exact = answer_correctness("the Eiffel Tower", ["Eiffel Tower", "tour Eiffel"])
    assert exact.value == 1.0 and exact.detail["em"] == 1.0
    partial = answer_correctness("Eiffel", ["Eiffel Tower"])
    assert partial.value == pytest.approx(2 / 3) and partial.detail["em"] == 0.0
    alias = answer_correctness("Stanley Hall", ["G. Stanley Hall", "Stanley Hall"])
    assert alias.value == 1.0 and alias.detail["em"] == 1.0
    assert answer_correctness("London", ["Paris"]).value == 0.0
    assert answer_correctness(None, ["Paris"]).value == 0.0


# ---------------------------------------------------------------------------- consistency


def test_consistency_is_one_when_the_answer_comes_from_what_was_received() -> None:
    result = consistency("Paris", [OBSERVATION], [SEARCH], [render_turn(THINK)])
    assert result.value == 1.0
    assert result.detail == {"supported": True, "invented_tool_responses": 0, "repeated": []}


def test_an_answer_no_observation_holds_is_unsupported() -> None:
    result = consistency("Lyon", [OBSERVATION], [SEARCH], [])
    assert result.value == pytest.approx(2 / 3) and result.detail["supported"] is False
    assert not is_supported("Paris", [])  # nothing received, nothing supported
    assert is_supported("yes", [OBSERVATION]) and not is_supported("no", [])


def test_invented_responses_and_repeated_calls_lower_consistency() -> None:
    invented = "<think>a</think>\n<tool_response>\nParis\n</tool_response>"
    result = consistency("Paris", [OBSERVATION], [SEARCH, SEARCH], [invented])
    assert result.value == pytest.approx(1 / 3)
    assert result.detail["invented_tool_responses"] == 1 and len(result.detail["repeated"]) == 1
    different = ToolCallItem("search", {"query": "France capital"})
    assert repeated_calls([SEARCH, different]) == []
    reordered = ToolCallItem("f", {"b": 1, "a": 2}), ToolCallItem("f", {"a": 2, "b": 1})
    assert len(repeated_calls(reordered)) == 1  # same arguments, whatever the key order


def test_evidence_is_the_values_of_json_observations() -> None:
    assert "Paris is the capital" in evidence_text([OBSERVATION])
    assert is_supported("Paris", ['{"result":"Paris"}'])  # not glued to its key
    assert evidence_text(["plain text"]) == "plain text"


# ---------------------------------------------------------------------------- efficiency


def test_efficiency_prefers_few_calls_and_few_tokens() -> None:
    options = {"ideal_calls": 2, "token_budget": 100}
    assert efficiency(1, 50, **options).value == 1.0
    assert efficiency(2, 100, **options).value == 1.0
    assert efficiency(0, 50, **options).value == 0.75  # answering without looking is suspect
    assert efficiency(4, 50, **options).value == pytest.approx((1 - 2 / 3 + 1) / 2)
    assert efficiency(5, 50, **options).value == 0.5  # calls part 0 from 2*ideal+1 calls
    assert efficiency(1, 400, **options).value == pytest.approx((1 + 0.25) / 2)


# ---------------------------------------------------------------------------- hedging, repetition


def test_hedging_in_the_answer_and_the_thinking() -> None:
    assert hedging("Paris", ["The result says Paris."]).value == 1.0
    hedged = hedging("probably Paris", [])
    assert hedged.value == pytest.approx(0.3) and hedged.detail["answer_hedges"] == ["probably"]
    assert hedging("unknown", []).value == pytest.approx(0.3)
    thinking = hedging("Paris", ["Maybe it is Paris, I think, not sure."])
    assert thinking.value == pytest.approx(0.7) and thinking.detail["think_hedges"] == 3


def test_repetition_counts_repeated_four_grams() -> None:
    assert repetition(["I search for the capital of France."]).value == 1.0
    looped = repetition(["I search the capital. " * 6])
    assert looped.value == 0.0 and looped.detail["repeated_share"] > 0.5
    assert repetition(["short"]).value == 1.0


# ---------------------------------------------------------------------------- the verdict


def test_a_good_trace_is_kept() -> None:
    score = score_record(record())
    assert score.kept and score.reasons == () and score.total == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"prediction": "Lyon", "last": AssistantTurn("r", answer="Lyon")}, "wrong_answer"),
        ({"raw": [render_turn(THINK), "<answer>Paris</answer>"]}, "grammar:missing_think"),
        ({"drop_answer": True}, "no_answer"),
        ({"observation": '{"result": "a city"}'}, "unsupported_answer"),
        ({"call": ToolCallItem("search", {"query": 1}, id="call_0_0")}, "invalid_tool_call"),
    ],
)
def test_each_gate_rejects_with_its_reason(changes: dict[str, Any], reason: str) -> None:
    call = changes.get("call", SEARCH)
    turns: list[AssistantTurn | ToolTurn] = [
        AssistantTurn("I search.", (call,)),
        ToolTurn((ToolResponse("call_0_0", changes.get("observation", OBSERVATION)),)),
        changes.get("last", ANSWER),
    ]
    if changes.get("drop_answer"):
        turns = turns[:2]
    raw = changes.get("raw", [render_turn(t) for t in turns if isinstance(t, AssistantTurn)])
    prediction = None if changes.get("drop_answer") else changes.get("prediction", "Paris")
    score = score_record(record(turns, raw=raw, prediction=prediction))
    assert not score.kept and score.reasons[0] == reason, score.reasons


def test_soft_checks_reject_only_through_the_total() -> None:
    twice = ToolCallItem("search", {"query": "capital of France"}, id="call_1_0")
    turns: list[AssistantTurn | ToolTurn] = [
        THINK,
        ToolTurn((ToolResponse("call_0_0", OBSERVATION),)),
        AssistantTurn("Again.", (twice,)),
        ToolTurn((ToolResponse("call_1_0", OBSERVATION),)),
        ANSWER,
    ]
    repeated = score_record(record(turns))
    assert repeated.kept and repeated.total < 1.0  # a repeated call costs, but is not a gate
    strict = score_record(record(turns), ScoreConfig(threshold=0.99))
    assert not strict.kept and strict.reasons == ("repeated_call", "low_score")


def test_simulator_flagged_traces_are_set_aside_not_scored_against_the_policy() -> None:
    flagged = record(observations=[Observation("call_0_0", True, flags=("quality",))])
    score = score_record(flagged)
    assert score.set_aside == SIMULATOR_FLAGGED and not score.kept
    assert score.primary_reason == SIMULATOR_FLAGGED


def test_score_config_rejects_bad_weights_with_a_fix() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        ScoreConfig(weights={**ScoreConfig().weights, "grammar": 0.5})
    with pytest.raises(ValueError, match="--threshold"):
        ScoreConfig(threshold=1.5)
