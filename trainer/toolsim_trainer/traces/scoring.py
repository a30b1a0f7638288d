"""AutoTraj scoring: each dimension a pure function in [0, 1], then one documented verdict.

Dimensions (``score_record`` computes all of them; weights in ``ScoreConfig``):

================  =====  ===========================================================================
dimension         weight what 1.0 means
================  =====  ===========================================================================
grammar           0.20   every assistant turn parses (``grammar.parse_turn``) and the last answers;
                         0.5 when all parse but the trace never answers, 0.0 on any broken turn
tool_calls        0.10   share of calls whose tool is in the toolset and whose arguments validate
                         against its ``parameters`` (jsonschema); 1.0 with no calls
correctness       0.30   token F1 of the answer against every gold answer and alias (EM in detail)
consistency       0.20   mean of three checks: the answer is supported by an observation the trace
                         received (yes/no answers: some observation was received); no
                         ``<tool_response>`` written by the policy; no call repeated with
                         identical arguments
efficiency        0.10   mean of a tool-call part (1.0 for 1..ideal calls, 0.5 for none, falling
                         to 0 at 2*ideal+1) and a token part (1.0 up to the budget, budget/tokens)
hedging           0.05   no hedge in the answer ("maybe", "I think", "unknown", ...): 0.7 of it;
                         hedges in the thinking: 0.3 of it, one third per hedge
repetition        0.05   1 - 2 x the share of repeated word 4-grams in the trace's own text
================  =====  ===========================================================================

Verdict: a trace is **kept** when ``total >= threshold`` (0.8) and it passes the gates a training
example must pass: grammar 1.0, answer F1 >= ``min_f1`` (0.6), the answer supported, nothing
invented. Otherwise its ``reasons`` list every failed check (stable codes, in ``REASONS`` order);
the first is the one a report counts it under. A trace with an observation the simulator flagged
is set aside (``SIMULATOR_FLAGGED``) before any of this: it measures the simulator, not the policy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from toolsim_trainer.answers import answer_in_text, exact_match, f1_score, normalize_answer
from toolsim_trainer.grammar import GrammarError, ToolCallItem, parse_turn
from toolsim_trainer.traces.records import (
    TraceRecord,
    evidence_text,
    flagged,
    observation_texts,
)

SIMULATOR_FLAGGED = "simulator_flagged"

REASONS: dict[str, str] = {
    "grammar": "an assistant turn breaks the grammar (grammar:<rule>)",
    "no_answer": "the trace ends without an answer (budget, turn limit, repair script ended)",
    "invented_tool_response": "the policy wrote a <tool_response> itself",
    "wrong_answer": "answer F1 against the gold answers is below min_f1",
    "unsupported_answer": "no observation the trace received supports the answer",
    "invalid_tool_call": "a call names an unknown tool or its arguments break the schema",
    "repeated_call": "the same call with identical arguments was made twice",
    "hedging": "the answer hedges",
    "repetition": "the trace repeats itself",
    "inefficient": "too many tool calls or tokens",
    "low_score": "every gate passes but the total is below the threshold",
}
"""Why a trace is not kept, in the order a report attributes it (first failing = counted)."""

HEDGES = (
    "maybe", "perhaps", "probably", "possibly", "might", "i think", "i believe", "not sure",
    "unsure", "unknown", "unclear", "i dont know", "cannot", "cant", "it seems", "likely",
    "no information", "not enough information",
)  # fmt: skip
"""Hedge phrases, matched as whole normalised words (``answers.normalize_answer``)."""

YES_NO = frozenset({"yes", "no"})


@dataclass(frozen=True)
class Dimension:
    """One dimension's value in [0, 1] and what it found."""

    value: float
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"value": round(self.value, 4), **self.detail}


@dataclass(frozen=True)
class ScoreConfig:
    """Weights, gates and budgets of the verdict (the defaults are the documented ones)."""

    weights: dict[str, float] = field(
        default_factory=lambda: {
            "grammar": 0.20,
            "tool_calls": 0.10,
            "correctness": 0.30,
            "consistency": 0.20,
            "efficiency": 0.10,
            "hedging": 0.05,
            "repetition": 0.05,
        }
    )
    threshold: float = 0.8
    """Kept when the weighted total reaches this (and every gate passes)."""
    min_f1: float = 0.6
    """The answer gate: F1 against the best gold answer."""
    ideal_calls: int = 2
    """Tool calls a multi-hop question should need; more cost efficiency."""
    token_budget: int = 600
    """Policy tokens in the whole trace before efficiency falls."""

    def __post_init__(self) -> None:
        missing = set(DIMENSIONS) - set(self.weights)
        if missing or any(w < 0 for w in self.weights.values()):
            raise ValueError(f"weights need every dimension {DIMENSIONS} (>= 0); missing {missing}")
        if abs(sum(self.weights.values()) - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1, got {sum(self.weights.values()):.4f}")
        if not 0.0 <= self.threshold <= 1.0 or not 0.0 <= self.min_f1 <= 1.0:
            raise ValueError("threshold and min_f1 are in [0, 1] (--threshold, --min-f1)")
        if self.ideal_calls < 1 or self.token_budget < 1:
            raise ValueError("ideal_calls and token_budget must be >= 1")


DIMENSIONS = (
    "grammar", "tool_calls", "correctness", "consistency", "efficiency", "hedging", "repetition",
)  # fmt: skip


# ---------------------------------------------------------------------------- dimensions


def grammar_validity(raw_turns: Sequence[str]) -> Dimension:
    """1.0: every turn parses and the last one answers; 0.5: all parse, no answer; 0.0: broken."""
    if not raw_turns:
        return Dimension(0.0, {"error": "empty_turn", "turns": 0})
    for index, text in enumerate(raw_turns):
        parsed = parse_turn(text)
        if isinstance(parsed, GrammarError):
            return Dimension(
                0.0, {"error": parsed.rule, "turn": index, "position": parsed.position}
            )
        last = parsed
    answered = last.answer is not None
    return Dimension(1.0 if answered else 0.5, {"answered": answered, "turns": len(raw_turns)})


def tool_call_validity(calls: Sequence[ToolCallItem], tools: Sequence[dict[str, Any]]) -> Dimension:
    """Share of calls to a tool of the toolset with arguments valid against its ``parameters``."""
    if not calls:
        return Dimension(1.0, {"calls": 0, "problems": []})
    schemas = {t.get("function", t)["name"]: t.get("function", t).get("parameters") for t in tools}
    problems: list[str] = []
    for call in calls:
        if call.name not in schemas:
            problems.append(f"{call.name}: unknown tool")
            continue
        error = _schema_error(call.arguments, schemas[call.name] or {"type": "object"})
        if error is not None:
            problems.append(f"{call.name}: {error}")
    valid = len(calls) - len(problems)
    return Dimension(valid / len(calls), {"calls": len(calls), "problems": problems})


def answer_correctness(prediction: str | None, golds: Sequence[str]) -> Dimension:
    """Token F1 against the best gold answer (exact match in the detail)."""
    em, f1 = exact_match(prediction, golds), f1_score(prediction, golds)
    return Dimension(f1, {"em": em, "f1": round(f1, 4), "prediction": prediction})


def consistency(
    prediction: str | None,
    observations: Sequence[str],
    calls: Sequence[ToolCallItem],
    raw_turns: Sequence[str],
) -> Dimension:
    """Mean of: answer supported by a received observation, nothing invented, no repeated call."""
    supported = is_supported(prediction, observations)
    invented = sum(text.count("<tool_response>") for text in raw_turns)
    repeated = repeated_calls(calls)
    checks = [supported, invented == 0, not repeated]
    detail = {"supported": supported, "invented_tool_responses": invented, "repeated": repeated}
    return Dimension(sum(checks) / len(checks), detail)


def is_supported(prediction: str | None, observations: Sequence[str]) -> bool:
    """The answer occurs in what the trace received; yes/no need only that something was."""
    if prediction is None or not normalize_answer(prediction):
        return False
    if normalize_answer(prediction) in YES_NO:
        return bool(observations)
    return answer_in_text([prediction], evidence_text(observations))


def repeated_calls(calls: Sequence[ToolCallItem]) -> list[str]:
    """Calls made again with identical arguments (each listed once)."""
    seen: set[str] = set()
    repeated: list[str] = []
    for call in calls:
        key = json.dumps([call.name, call.arguments], sort_keys=True, ensure_ascii=False)
        if key in seen and key not in repeated:
            repeated.append(key)
        seen.add(key)
    return repeated


def efficiency(n_calls: int, tokens: int, *, ideal_calls: int, token_budget: int) -> Dimension:
    """Few calls (1..ideal best; none is suspicious) and few tokens."""
    if n_calls == 0:
        calls_part = 0.5
    else:
        calls_part = max(0.0, 1.0 - max(0, n_calls - ideal_calls) / (ideal_calls + 1))
    tokens_part = 1.0 if tokens <= token_budget else token_budget / tokens
    value = (calls_part + tokens_part) / 2
    return Dimension(value, {"tool_calls": n_calls, "tokens": tokens})


def hedging(prediction: str | None, thinks: Sequence[str]) -> Dimension:
    """The answer commits (0.7 of the value); the thinking hedges little (0.3)."""
    answer_hedges = _hedges(prediction or "")
    think_hedges = sum(len(_hedges(t)) for t in thinks)
    value = 0.7 * (not answer_hedges) + 0.3 * max(0.0, 1.0 - think_hedges / 3)
    return Dimension(value, {"answer_hedges": answer_hedges, "think_hedges": think_hedges})


def repetition(texts: Sequence[str]) -> Dimension:
    """1 - 2 x the share of word 4-grams that repeat an earlier one (across all the texts)."""
    words = normalize_answer(" ".join(texts)).split()
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    if not grams:
        return Dimension(1.0, {"repeated_share": 0.0})
    share = 1.0 - len(set(grams)) / len(grams)
    return Dimension(max(0.0, 1.0 - 2 * share), {"repeated_share": round(share, 4)})


# ---------------------------------------------------------------------------- a record


@dataclass(frozen=True)
class Score:
    """All dimensions of one trace, the weighted total and the verdict."""

    key: str
    dimensions: dict[str, Dimension]
    total: float
    kept: bool
    reasons: tuple[str, ...]
    set_aside: str | None = None

    @property
    def primary_reason(self) -> str | None:
        return self.set_aside or (self.reasons[0] if self.reasons else None)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "total": round(self.total, 4),
            "kept": self.kept,
            "reasons": list(self.reasons),
            "set_aside": self.set_aside,
            "dimensions": {name: d.to_json() for name, d in self.dimensions.items()},
        }


def dimensions_of(record: TraceRecord, config: ScoreConfig) -> dict[str, Dimension]:
    """Every dimension of ``record``."""
    trace = record.trace
    calls = trace.tool_calls
    thinks = [t.think for t in trace.assistant_turns]
    answer = record.prediction
    return {
        "grammar": grammar_validity(record.raw_turns),
        "tool_calls": tool_call_validity(calls, record.tools),
        "correctness": answer_correctness(answer, record.answers),
        "consistency": consistency(answer, observation_texts(record), calls, record.raw_turns),
        "efficiency": efficiency(
            len(calls),
            record.completion_tokens,
            ideal_calls=max(config.ideal_calls, len(record.subquestions)),
            token_budget=config.token_budget,
        ),
        "hedging": hedging(answer, thinks),
        "repetition": repetition([*thinks, answer or ""]),
    }


def score_record(record: TraceRecord, config: ScoreConfig | None = None) -> Score:
    """Score ``record`` and decide: kept, to repair (with reasons), or set aside."""
    config = config or ScoreConfig()
    dims = dimensions_of(record, config)
    total = sum(config.weights[name] * d.value for name, d in dims.items())
    if flagged(record.observations):
        return Score(record.key, dims, total, False, (SIMULATOR_FLAGGED,), SIMULATOR_FLAGGED)
    reasons = verdict_reasons(dims, total, config)
    return Score(record.key, dims, total, not reasons, reasons)


def verdict_reasons(
    dims: dict[str, Dimension], total: float, config: ScoreConfig
) -> tuple[str, ...]:
    """Every failed check, in ``REASONS`` order; empty = kept.

    A failed gate (``GATES``) always rejects; the other checks only lower the total, and are
    listed (before ``low_score``) when the total falls short of the threshold.
    """
    checks = failed_checks(dims, config.min_f1)
    gated = any(c.split(":", 1)[0] in GATES for c in checks)
    if not gated and total >= config.threshold:
        return ()
    return tuple(checks if gated else [*checks, "low_score"])


GATES = frozenset(
    {
        "grammar",
        "no_answer",
        "invented_tool_response",
        "wrong_answer",
        "unsupported_answer",
        "invalid_tool_call",
    }
)
"""Checks a training example must pass, whatever its total."""


def failed_checks(dims: dict[str, Dimension], min_f1: float = 0.6) -> list[str]:
    """The reason codes of every check ``dims`` fails, in ``REASONS`` order."""
    grammar, consistent = dims["grammar"], dims["consistency"].detail
    flags = {
        f"grammar:{grammar.detail.get('error')}": grammar.value == 0.0,
        "no_answer": 0.0 < grammar.value < 1.0,
        "invented_tool_response": bool(consistent["invented_tool_responses"]),
        "wrong_answer": dims["correctness"].value < min_f1,
        "unsupported_answer": not consistent["supported"],
        "invalid_tool_call": dims["tool_calls"].value < 1.0,
        "repeated_call": bool(consistent["repeated"]),
        "hedging": bool(dims["hedging"].detail["answer_hedges"]),
        "repetition": dims["repetition"].value < 0.5,
        "inefficient": dims["efficiency"].value < 0.5,
    }
    return [code for code, failed in flags.items() if failed]


def _hedges(text: str) -> list[str]:
    padded = f" {normalize_answer(text)} "
    return [h for h in HEDGES if f" {h} " in padded]


def _schema_error(arguments: dict[str, Any], schema: dict[str, Any]) -> str | None:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    error = jsonschema.exceptions.best_match(cls(schema).iter_errors(arguments))
    return None if error is None else error.message
