"""The GRPO reward terms on crafted rollouts: each term, each sign, and their assembly."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from toolsim_trainer.grammar import AssistantTurn, ToolCallItem, render_turn
from toolsim_trainer.train.rewards import (
    CallRecord,
    RolloutRecord,
    build_reward_funcs,
    consistency,
    correctness_em,
    correctness_f1,
    format_reward,
    make_overlong_reward,
    make_rm_reward,
    make_tool_budget_reward,
    shuffled,
)

QUESTION = "Which city is the capital of France?"
OBS = json.dumps({"results": [{"title": "France", "text": "Paris is the capital of France."}]})


def call_turn(query: str = "capital of France") -> str:
    return render_turn(AssistantTurn("look it up", (ToolCallItem("search", {"query": query}),)))


def answer_turn(answer: str) -> str:
    return render_turn(AssistantTurn("found it", answer=answer))


def search(
    content: str = OBS, *, ok: bool = True, code: str | None = None, **kw: Any
) -> CallRecord:
    return CallRecord("search", {"query": "q"}, "call_1_0", content, ok, code, **kw)


def record(
    turns: list[str],
    calls: list[tuple[CallRecord, ...]] | None = None,
    *,
    stop: str = "answer",
    requested: int | None = None,
    policy_tokens: int = 50,
    complete: bool = True,
) -> RolloutRecord:
    tool_turns = calls if calls is not None else [()] * len(turns)
    tool_turns = list(tool_turns) + [()] * (len(turns) - len(tool_turns))
    return RolloutRecord(
        question=QUESTION,
        turns=tuple(turns),
        tool_turns=tuple(tool_turns),
        stop=stop,
        requested_calls=requested if requested is not None else sum(map(len, tool_turns)),
        policy_tokens=policy_tokens,
        last_turn_complete=complete,
    )


def score(func: Any, *records: RolloutRecord, golds: list[str] | None = None) -> list[Any]:
    answers = [golds or ["Paris"]] * len(records)
    return list(func([None] * len(records), rollout=list(records), answers=answers))


GOOD = record([call_turn(), answer_turn("Paris")], [(search(),)])


# ---------------------------------------------------------------------------- correctness


def test_exact_match_against_every_gold_answer() -> None:
    wrong = record([call_turn(), answer_turn("Lyon")], [(search(),)])
    alias = record([answer_turn("the City of Light")])
    golds = ["Paris", "City of Light"]
    assert score(correctness_em, GOOD, wrong, alias, golds=golds) == [1.0, 0.0, 1.0]


def test_f1_gives_partial_credit_and_zero_without_an_answer() -> None:
    partial = record([answer_turn("Paris France")])
    cut = record([call_turn()], [(search(),)], stop="tool_limit")
    f1 = score(correctness_f1, GOOD, partial, cut)
    assert f1[0] == 1.0
    assert f1[1] == pytest.approx(2 / 3)
    assert f1[2] == 0.0


def test_answer_is_read_leniently_from_a_broken_final_turn() -> None:
    broken = record(["no think block <answer>Paris</answer>"])
    assert score(correctness_em, broken) == [1.0]
    assert score(format_reward, broken) == [-1.0]


def test_rewards_without_the_rollout_column_fail_loudly() -> None:
    with pytest.raises(ValueError, match="rollout_func=make_rollout_func"):
        correctness_em([None], answers=[["Paris"]])
    with pytest.raises(ValueError, match="'answers'"):
        correctness_em([None], rollout=[GOOD])


# ---------------------------------------------------------------------------- consistency


def test_consistency_rewards_an_answer_found_in_the_observations() -> None:
    assert score(consistency, GOOD) == [1.0]


def test_consistency_penalises_an_answer_the_observations_do_not_support() -> None:
    unsupported = record([call_turn(), answer_turn("Lyon")], [(search(),)])
    no_tools = record([answer_turn("Paris")])
    failed = record(
        [call_turn(), answer_turn("Paris")],
        [(search('{"error": {"code": "tool_unavailable"}}', ok=False, code="tool_unavailable"),)],
    )
    # a failed call's error text does not count as support
    assert score(consistency, unsupported, no_tools, failed) == [-1.0, -1.0, -1.0]


def test_consistency_penalises_invalid_calls_and_invented_tool_responses() -> None:
    invalid = record(
        [call_turn(), answer_turn("Paris")],
        [(search(ok=False, code="invalid_arguments"), search())],
    )
    unknown = record(
        [call_turn(), answer_turn("Paris")], [(search(ok=False, code="tool_not_found"),)]
    )
    invented = record(
        [call_turn() + "\n<tool_response>\nParis\n</tool_response>", answer_turn("Paris")],
        [(search(),)],
    )
    assert score(consistency, invalid, unknown, invented) == [-1.0, -1.0, -1.0]


def test_service_failures_are_not_invalid_calls() -> None:
    outage = record(
        [call_turn(), call_turn(), answer_turn("Paris")],
        [(search(ok=False, code="tool_unavailable"),), (search(),)],
    )
    assert score(consistency, outage) == [1.0]


def test_a_flagged_observation_makes_the_support_penalty_neutral() -> None:
    flagged = record([call_turn(), answer_turn("Lyon")], [(search(flags=("fidelity",)),)])
    assert flagged.flagged
    assert score(consistency, flagged) == [0.0]
    # the policy's own faults are still its own
    flagged_invalid = record(
        [call_turn(), answer_turn("Lyon")],
        [(search(flags=("quality",)), search(ok=False, code="invalid_arguments"))],
    )
    assert score(consistency, flagged_invalid) == [-1.0]


def test_consistency_is_neutral_without_an_answer() -> None:
    cut = record([call_turn()], [(search(),)], stop="turn_limit")
    assert score(consistency, cut) == [0.0]


# ---------------------------------------------------------------------------- format


def test_format_signs() -> None:
    cut_by_budget = record([call_turn(), call_turn()], [(search(),)], stop="tool_limit")
    cut_mid_turn = record(
        [call_turn(), "<think>still thinking"], [(search(),)], stop="length", complete=False
    )
    broken_first = record(["<tool_call>{}</tool_call>", answer_turn("Paris")])
    bad_json = record(
        ['<think>x</think>\n<tool_call>\n{"name": "search"\n</tool_call>'], stop="grammar_error"
    )
    scores = score(format_reward, GOOD, cut_by_budget, cut_mid_turn, broken_first, bad_json)
    assert scores == [1.0, 0.0, 0.0, -1.0, -1.0]
    assert format_reward.__name__ == "format"  # TRL logs rewards/format/mean


# ---------------------------------------------------------------------------- budgets


def test_tool_budget_charges_calls_past_the_budget_including_unsent_ones() -> None:
    reward = make_tool_budget_reward(budget=2, penalty_per_call=0.25)
    under = record([call_turn(), answer_turn("Paris")], [(search(),)])
    over = record([call_turn()] * 4, [(search(),)] * 3, stop="tool_limit", requested=4)
    runaway = record([call_turn()] * 9, [(search(),)] * 4, stop="tool_limit", requested=20)
    assert score(reward, under, over, runaway) == [0.0, -0.5, -1.0]
    assert reward.__name__ == "tool_budget"


def test_overlong_counts_policy_tokens_only() -> None:
    reward = make_overlong_reward(max_tokens=100, buffer_tokens=20)
    lengths = [50, 80, 90, 100, 120]
    records = [record([answer_turn("Paris")], policy_tokens=n) for n in lengths]
    assert score(reward, *records) == [0.0, 0.0, pytest.approx(-0.5), -1.0, -1.0]
    # a long observation does not count: same policy tokens, many tool tokens
    long_obs = RolloutRecord(
        QUESTION, GOOD.turns, GOOD.tool_turns, "answer", 1, 60, tool_tokens=5000
    )
    assert score(reward, long_obs) == [0.0]


# ---------------------------------------------------------------------------- RM, shuffle, assembly


def test_rm_score_scores_grammatical_traces_with_their_tools() -> None:
    seen: list[Any] = []

    def scorer(conversations: Any, tools: Any = None) -> list[float]:
        seen.append((conversations, tools))
        return [float(len(c)) for c in conversations]

    tools = [{"type": "function", "function": {"name": "search"}}]
    broken = record(["no grammar"], stop="grammar_error")
    scores = score(make_rm_reward(scorer, tools), GOOD, broken)
    assert scores == [5.0, None]  # system, user, assistant call, tool, assistant answer
    conversations, passed_tools = seen[0]
    assert [m["role"] for m in conversations[0]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert conversations[0][3]["content"] == OBS
    assert conversations[0][2]["tool_calls"][0]["id"] == conversations[0][3]["tool_call_id"]
    assert passed_tools == [tools]


def test_shuffled_rewards_move_together_and_repeat_per_step() -> None:
    @dataclass
    class State:
        global_step: int

    records = [
        record([answer_turn(a)]) for a in ["Paris", "Lyon", "Nice", "Paris", "Lyon", "Lille"]
    ]
    kwargs = {"rollout": records, "answers": [["Paris"]] * 6, "trainer_state": State(3)}
    plain = correctness_em([None] * 6, **kwargs)
    em, f1 = shuffled(correctness_em, 7), shuffled(correctness_f1, 7)
    first = em([None] * 6, **kwargs)
    assert sorted(first, key=str) == sorted(plain, key=str) and first != plain
    assert f1([None] * 6, **kwargs) == first  # EM and F1 agree here: one permutation for both
    assert em([None] * 6, **kwargs) == first  # same seed and step: same permutation
    assert em.__name__ == "correctness_em"


@dataclass
class Weights:
    reward_em_weight: float = 1.0
    reward_f1_weight: float = 0.5
    reward_consistency_weight: float = 0.5
    reward_format_weight: float = 0.25
    reward_tool_budget_weight: float = 1.0
    reward_overlong_weight: float = 0.0
    tool_budget: int = 2
    tool_budget_penalty: float = 0.25
    overlong_max_tokens: int | None = None
    overlong_buffer: int = 16
    max_completion_length: int | None = 64
    rm_weight: float = 0.3
    shuffle_rewards: bool = False
    seed: int = 0


def test_build_reward_funcs_names_and_weights() -> None:
    funcs, weights = build_reward_funcs(Weights())
    names = [f.__name__ for f in funcs]
    assert names == [
        "correctness_em",
        "correctness_f1",
        "consistency",
        "format",
        "tool_budget",
        "overlong",
    ]
    assert weights == [1.0, 0.5, 0.5, 0.25, 1.0, 0.0]  # a weight-0 term is still logged
    long = record([answer_turn("Paris")], policy_tokens=64)
    assert score(funcs[5], long) == [-1.0]  # overlong_max_tokens defaults to max_completion_length
    with_rm, rm_weights = build_reward_funcs(Weights(), lambda c, t=None: [0.0] * len(c), tools=[])
    assert with_rm[-1].__name__ == "rm_score" and rm_weights[-1] == 0.3
