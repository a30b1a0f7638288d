"""The trace record: one JSONL line per (question, candidate), the unit everything else reads.

``generate`` writes them, ``score`` and ``repair`` read them, a repair is one too (its
``teacher.kind`` is ``"repair"``). A record holds everything needed to score the trace without
any service: the question and gold answers, the tools the trace could call, the messages
(``grammar.trace_to_messages``, object arguments), the raw text of every assistant turn (a
turn that broke the grammar is only there), and per observation what the ToolActor said about
it (``ok``, error ``code``, ``source``, simulator ``flags``).

Fields (all JSON)::

    id, candidate, question, answers, subquestions, source   the row and the candidate index k
    teacher {kind: "llm"|"gold"|"repair", name, ...}          who wrote the turns
    seed, seeds {episode, teacher, maker}                     the unit seed and what it seeded
    toolset_id, episode_id, tools, grounding                  where the calls went (a repair
                                                              opens a new episode like it)
    status, failure, prediction, grammar_error {rule, position, message} | null
    messages, raw_turns, observations [{tool_call_id, ok, code, source, latency_ms, flags}]
    turn_latencies [{policy_s, tools_s, tokens}], wall_s, created
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from toolsim_trainer.agent import AgentResult
from toolsim_trainer.clients import ToolResult
from toolsim_trainer.data import QuestionRow, grounding_of
from toolsim_trainer.grammar import (
    GrammarError,
    ToolTurn,
    Trace,
    messages_to_trace,
    trace_to_messages,
)

TeacherKind = str
"""``"llm"`` (a model wrote it), ``"gold"`` (the bootstrap wrote it from the row), ``"repair"``."""


class RecordError(ValueError):
    """A trace record that lacks a field or whose messages do not form a trace."""


@dataclass(frozen=True)
class Observation:
    """What the ToolActor said about one call, beside the content the policy saw."""

    tool_call_id: str
    ok: bool
    code: str | None = None
    source: str | None = None
    latency_ms: float = 0.0
    flags: tuple[str, ...] = ()

    @classmethod
    def of(cls, result: ToolResult) -> Observation:
        return cls(
            result.tool_call_id, result.ok, result.code, result.source, result.latency_ms,
            tuple(result.flags),
        )  # fmt: skip


@dataclass
class TraceRecord:
    id: str
    candidate: int
    question: str
    answers: tuple[str, ...]
    teacher: dict[str, Any]
    trace: Trace
    status: str
    seed: int = 0
    seeds: dict[str, int | None] = field(default_factory=dict)
    """``episode`` (the ToolActor episode), ``teacher`` (turn t is sampled with teacher + t),
    ``maker`` (the ToolMaker's generation; None for a named toolset)."""
    tools: list[dict[str, Any]] = field(default_factory=list)
    toolset_id: str | None = None
    episode_id: str | None = None
    grounding: dict[str, Any] | None = None
    prediction: str | None = None
    grammar_error: GrammarError | None = None
    failure: str | None = None
    raw_turns: list[str] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    turn_latencies: list[dict[str, float]] = field(default_factory=list)
    subquestions: tuple[str, ...] = ()
    source: str = ""
    wall_s: float = 0.0
    created: float = field(default_factory=time.time)

    @property
    def key(self) -> str:
        """Unique across files: ``teacher name|toolset id|question id|candidate``."""
        teacher = str(self.teacher.get("name", ""))
        return trace_key(teacher, self.toolset_id or "", self.id, self.candidate)

    @property
    def teacher_kind(self) -> TeacherKind:
        return str(self.teacher.get("kind", "llm"))

    @property
    def completion_tokens(self) -> int:
        """Tokens the policy wrote (counted by the engine; estimated at 4 chars a token when
        the engine did not count, as for the gold bootstrap)."""
        counted = int(sum(t.get("tokens", 0) for t in self.turn_latencies))
        return counted or sum(len(t) for t in self.raw_turns) // 4

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "candidate": self.candidate,
            "question": self.question,
            "answers": list(self.answers),
            "subquestions": list(self.subquestions),
            "source": self.source,
            "teacher": self.teacher,
            "seed": self.seed,
            "seeds": self.seeds,
            "toolset_id": self.toolset_id,
            "episode_id": self.episode_id,
            "tools": self.tools,
            "grounding": self.grounding,
            "status": self.status,
            "failure": self.failure,
            "prediction": self.prediction,
            "grammar_error": asdict(self.grammar_error) if self.grammar_error else None,
            "messages": trace_to_messages(self.trace),
            "raw_turns": self.raw_turns,
            "observations": [asdict(o) for o in self.observations],
            "turn_latencies": self.turn_latencies,
            "wall_s": round(self.wall_s, 4),
            "created": self.created,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], where: str = "record") -> TraceRecord:
        try:
            trace = messages_to_trace(raw["messages"])
            error = raw.get("grammar_error")
            return cls(
                id=str(raw["id"]),
                candidate=int(raw["candidate"]),
                question=str(raw["question"]),
                answers=tuple(raw["answers"]),
                teacher=dict(raw["teacher"]),
                trace=trace,
                status=str(raw["status"]),
                seed=int(raw.get("seed", 0)),
                seeds=dict(raw.get("seeds", {})),
                tools=list(raw.get("tools", [])),
                toolset_id=raw.get("toolset_id"),
                episode_id=raw.get("episode_id"),
                grounding=raw.get("grounding"),
                prediction=raw.get("prediction"),
                grammar_error=GrammarError(**error) if error else None,
                failure=raw.get("failure"),
                raw_turns=list(raw.get("raw_turns", [])),
                observations=[_observation(o) for o in raw.get("observations", [])],
                turn_latencies=list(raw.get("turn_latencies", [])),
                subquestions=tuple(raw.get("subquestions", ())),
                source=str(raw.get("source", "")),
                wall_s=float(raw.get("wall_s", 0.0)),
                created=float(raw.get("created", 0.0)),
            )
        except KeyError as exc:
            raise RecordError(f"{where}: missing field {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise RecordError(f"{where}: {exc}") from exc


def trace_key(teacher_name: str, toolset_id: str, question_id: str, candidate: int) -> str:
    return f"{teacher_name}|{toolset_id}|{question_id}|{candidate}"


def _observation(raw: Mapping[str, Any]) -> Observation:
    return Observation(
        tool_call_id=str(raw["tool_call_id"]),
        ok=bool(raw["ok"]),
        code=raw.get("code"),
        source=raw.get("source"),
        latency_ms=float(raw.get("latency_ms", 0.0)),
        flags=tuple(raw.get("flags", ())),
    )


def record_of(
    result: AgentResult,
    row: QuestionRow,
    *,
    candidate: int,
    teacher: dict[str, Any],
    seed: int,
    toolset: Mapping[str, Any],
    episode_id: str | None,
    wall_s: float,
    maker_seed: int | None = None,
) -> TraceRecord:
    """The record of one finished agent run on ``row``."""
    return TraceRecord(
        id=row.id,
        candidate=candidate,
        question=row.question,
        answers=row.answers,
        subquestions=row.subquestions,
        source=row.source,
        teacher=teacher,
        trace=result.trace,
        status=result.status,
        seed=seed,
        seeds={"episode": seed, "teacher": seed, "maker": maker_seed},
        tools=list(toolset.get("tools", [])),
        toolset_id=toolset.get("id"),
        episode_id=episode_id,
        grounding=grounding_of(row),
        prediction=result.prediction,
        grammar_error=result.grammar_error,
        failure=result.failure,
        raw_turns=list(result.raw_turns),
        observations=[Observation.of(r) for r in result.tool_results],
        turn_latencies=list(result.turn_latencies),
        wall_s=wall_s,
    )


def observation_texts(record: TraceRecord, *, ok_only: bool = True) -> list[str]:
    """The contents the trace actually received (errors left out unless ``ok_only=False``)."""
    ok = {o.tool_call_id: o.ok for o in record.observations}
    return [
        r.content
        for turn in record.trace.turns
        if isinstance(turn, ToolTurn)
        for r in turn.responses
        if not ok_only or ok.get(r.tool_call_id, True)
    ]


def evidence_text(contents: Sequence[str]) -> str:
    """The text an answer can be found in: the string and number values of JSON observations
    (one a line), other observations as they are.

    Matching against the raw JSON would glue a key to its value once punctuation is normalised
    away (``{"result":"Paris"}`` becomes ``resultparis``), so "Paris" would not be found.
    """
    lines: list[str] = []
    for content in contents:
        try:
            value = json.loads(content)
        except ValueError:
            lines.append(content)
            continue
        lines.extend(_leaves(value))
    return "\n".join(lines)


def _leaves(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    if isinstance(value, bool) or value is None:
        return []
    return [str(value)]


def flagged(observations: Sequence[Observation]) -> list[str]:
    """Ids of the observations the simulator flagged (its failure, never the policy's)."""
    return [o.tool_call_id for o in observations if o.flags]
