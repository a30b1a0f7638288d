"""AutoTraj repair: an LLM rewrites a trace that was not kept; its calls run again, for real.

The repairer (any ``Policy``: an OpenAI-compatible endpoint or the local model) is shown the
question, the tools (in its system prompt, as the Qwen2.5 template lists them), the faulty trace,
its scores and the reasons it was not kept, and the reference answer (so it knows what to look
for; the repair is still only accepted when the *real* observations support its answer). It
writes its assistant turns in the trace grammar.

A repair may not invent observations. ``split_proposal`` cuts the repairer's text into assistant
turns and throws away any ``<tool_response>`` it wrote (counted in ``invented_observations``);
``ReplayPolicy`` then plays those turns through ``agent.run_agent`` in a fresh ToolActor episode
with the original's toolset, grounding and seed, so every call is executed again and the trace
holds the real observations. Turns written against invented observations are simply re-scored
against the real ones. The repaired trace is re-parsed and re-scored (``scoring.score_record``),
and accepted only if it scores higher than the original and passes the keep verdict.

Resumable like generation: ``repairs.jsonl`` is keyed by the original's key; a repair that
fails (repairer or ToolActor unreachable after retries, a timeout) goes to
``repairs.jsonl.failures.jsonl`` and is retried by the next run.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm  # type: ignore[import-untyped]

from toolsim_trainer.agent import AgentLimits, AgentResult, ToolContext, run_agent
from toolsim_trainer.clients import ActorClient
from toolsim_trainer.grammar import SYSTEM_PROMPT, AssistantTurn, render_turn
from toolsim_trainer.jsonl import JsonlWriter, key_by
from toolsim_trainer.policy import Policy, PolicyError, PolicyOutput, tools_block
from toolsim_trainer.traces.generate import TRANSIENT, UnitFailed, failure_reason, service_call
from toolsim_trainer.traces.records import Observation, TraceRecord
from toolsim_trainer.traces.scoring import REASONS, Score, ScoreConfig, score_record

log = logging.getLogger(__name__)

SCRIPT_ENDED = "script_ended"
"""Status of a repaired trace whose proposed turns ran out before an answer."""

REPAIR_INSTRUCTIONS = (
    "You repair traces of an assistant that answers questions with tools. The assistant "
    "follows these rules:\n\n"
    f"{SYSTEM_PROMPT}\n\n"
    "You are shown a faulty trace, its scores and what is wrong with it. Write the corrected "
    "trace: only the assistant's turns, in order, each one starting with <think>. Do not write "
    "<tool_response> blocks: every tool call is executed again for real, and the final answer "
    "must be found in what the tools return."
)

_TOOL_RESPONSE = re.compile(r"<tool_response>.*?(?:</tool_response>|$)", flags=re.DOTALL)
_CHATML = re.compile(r"<\|im_start\|>(?:assistant|user|system|tool)?\n?|<\|im_end\|>")


class ScriptEnded(PolicyError):
    """The repairer's proposed turns ran out before an answer (not a failure: a result)."""


@dataclass(frozen=True)
class Proposal:
    """The repairer's text cut into assistant turns, invented observations removed."""

    text: str
    turns: tuple[str, ...]
    invented_observations: int


def split_proposal(text: str) -> Proposal:
    """Assistant turns of ``text``: cut before every ``<think>``, ``<tool_response>`` removed."""
    invented = len(_TOOL_RESPONSE.findall(text))
    cleaned = _CHATML.sub("\n", _TOOL_RESPONSE.sub("\n", text))
    chunks = [c.strip() for c in re.split(r"(?=<think>)", cleaned)]
    return Proposal(text, tuple(c for c in chunks if c), invented)


class ReplayPolicy(Policy):
    """Plays fixed assistant turns in order, whatever the observations (they are real)."""

    def __init__(self, turns: Sequence[str], name: str = "replay") -> None:
        self.turns = list(turns)
        self.name = name
        self.ended = False
        """Set when the turns ran out before an answer (the loop then reports a failure)."""

    async def complete(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        *,
        seed: int,
        temperature: float,
        max_tokens: int,
    ) -> PolicyOutput:
        step = sum(m.get("role") == "assistant" for m in messages)
        if step >= len(self.turns):
            self.ended = True
            raise ScriptEnded(f"the repair has {len(self.turns)} turns and no answer")
        return PolicyOutput(text=self.turns[step], finish_reason="stop")


def faulty_text(record: TraceRecord) -> str:
    """The trace as the repairer reads it: turns, observations, and the turn that broke."""
    parts: list[str] = []
    for turn in record.trace.turns:
        if isinstance(turn, AssistantTurn):
            parts.append(render_turn(turn))
        else:
            parts.extend(f"<tool_response>\n{r.content}\n</tool_response>" for r in turn.responses)
    if record.grammar_error is not None and record.raw_turns:
        parts.append(record.raw_turns[-1])
    return "\n".join(parts) if parts else "(no turns)"


def repair_messages(record: TraceRecord, score: Score) -> list[dict[str, Any]]:
    """The repairer's conversation: instructions (+ tools) and the repair task."""
    problems = "\n".join(
        f"- {reason}: {REASONS.get(reason.split(':', 1)[0], reason)}" for reason in score.reasons
    )
    scores = ", ".join(f"{name} {d.value:.2f}" for name, d in score.dimensions.items())
    task = (
        f"Question: {record.question}\n"
        f"Reference answer: {record.answers[0] if record.answers else 'unknown'}\n\n"
        f"Faulty trace:\n{faulty_text(record)}\n\n"
        f"What is wrong:\n{problems or '- low_score'}\n"
        f"Scores: {scores} (total {score.total:.2f})\n\n"
        "Write the corrected trace."
    )
    system = REPAIR_INSTRUCTIONS + (tools_block(record.tools) if record.tools else "")
    return [{"role": "system", "content": system}, {"role": "user", "content": task}]


@dataclass(frozen=True)
class RepairConfig:
    out: Path
    """``repairs.jsonl`` (appended to; rerun with the same path to resume)."""
    score: ScoreConfig = field(default_factory=ScoreConfig)
    limits: AgentLimits = field(default_factory=AgentLimits)
    """Turns and tool calls the replay may use (as in generation)."""
    max_tokens: int = 768
    """Tokens the repairer may write for the whole corrected trace."""
    temperature: float = 0.0
    concurrency: int = 4
    min_gain: float = 0.0
    """A repair is accepted only when its total beats the original's by more than this."""
    unit_timeout_s: float = 900.0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_tokens < 16:
            raise ValueError("the repairer needs max_tokens >= 16 (--repair-max-tokens)")
        if self.concurrency < 1 or self.unit_timeout_s <= 0:
            raise ValueError("concurrency must be >= 1 and unit_timeout_s > 0")
        if self.min_gain < 0:
            raise ValueError("min_gain must be >= 0")

    @property
    def failures_path(self) -> Path:
        return self.out.with_name(self.out.name + ".failures.jsonl")


@dataclass
class RepairOutcome:
    """One repair attempt: the repaired record, its score, and whether it replaces the original."""

    of: str
    original_total: float
    record: TraceRecord
    score: Score
    accepted: bool
    invented_observations: int
    proposal: str

    @property
    def verdict(self) -> str:
        """``accepted``, ``not_better`` (scored no higher), ``still_failing`` (higher, not kept),
        or the set-aside reason."""
        if self.accepted:
            return "accepted"
        if self.score.set_aside:
            return self.score.set_aside
        if self.score.total <= self.original_total:
            return "not_better"
        return "still_failing"

    def to_json(self) -> dict[str, Any]:
        return {
            "of": self.of,
            "accepted": self.accepted,
            "verdict": self.verdict,
            "original_total": round(self.original_total, 4),
            "repair_total": round(self.score.total, 4),
            "invented_observations": self.invented_observations,
            "proposal": self.proposal,
            "score": self.score.to_json(),
            "record": self.record.to_json(),
        }

    @classmethod
    def from_json(
        cls,
        raw: dict[str, Any],
        config: ScoreConfig,
        where: str,
        *,
        original_total: float | None = None,
        min_gain: float = 0.0,
    ) -> RepairOutcome:
        """A stored outcome, re-scored under ``config`` (the verdict follows the current
        threshold, not the one of the run that wrote it); ``original_total`` likewise."""
        record = TraceRecord.from_json(raw["record"], where)
        score = score_record(record, config)
        before = float(raw["original_total"]) if original_total is None else original_total
        return cls(
            of=str(raw["of"]),
            original_total=before,
            record=record,
            score=score,
            accepted=is_accepted(score, before, min_gain),
            invented_observations=int(raw.get("invented_observations", 0)),
            proposal=str(raw.get("proposal", "")),
        )


def is_accepted(repair: Score, original_total: float, min_gain: float) -> bool:
    """A repair replaces its original when it is kept and scores more than ``min_gain`` higher."""
    return repair.kept and repair.total > original_total + min_gain


def load_outcome(
    raw: dict[str, Any],
    scores: dict[str, Score],
    config: ScoreConfig,
    where: str,
    min_gain: float = 0.0,
) -> RepairOutcome:
    """A stored outcome judged against its original's current score."""
    original = scores.get(str(raw.get("of")))
    total = original.total if original is not None else None
    return RepairOutcome.from_json(raw, config, where, original_total=total, min_gain=min_gain)


def needs_repair(score: Score) -> bool:
    """Not kept and not set aside (a simulator-flagged trace is never repaired)."""
    return not score.kept and score.set_aside is None


async def repair_one(
    record: TraceRecord,
    score: Score,
    repairer: Policy,
    actor: ActorClient,
    config: RepairConfig,
) -> RepairOutcome:
    """Ask for a corrected trace, replay it through the ToolActor, re-score it."""
    out = await repairer.complete(
        repair_messages(record, score),
        [],
        seed=record.seed,
        temperature=config.temperature,
        max_tokens=config.max_tokens,
    )
    proposal = split_proposal(out.text)
    if record.toolset_id is None:
        raise UnitFailed(f"{record.key}: the record has no toolset_id to replay against")
    replayed, episode_id, wall_s = await _replay(record, proposal, actor, config.limits)
    repaired = TraceRecord(
        id=record.id,
        candidate=record.candidate,
        question=record.question,
        answers=record.answers,
        subquestions=record.subquestions,
        source=record.source,
        teacher={
            "kind": "repair",
            "name": repairer.name,
            "of": record.key,
            "latency_s": round(out.latency_s, 4),
            "completion_tokens": out.completion_tokens,
        },
        trace=replayed.trace,
        status=SCRIPT_ENDED if replayed.status == "failed" else replayed.status,
        seed=record.seed,
        seeds={**record.seeds, "teacher": None, "repairer": record.seed},  # replay samples none
        tools=record.tools,
        toolset_id=record.toolset_id,
        episode_id=episode_id,
        grounding=record.grounding,
        prediction=replayed.prediction,
        grammar_error=replayed.grammar_error,
        failure=None,
        raw_turns=list(replayed.raw_turns),
        observations=[Observation.of(r) for r in replayed.tool_results],
        turn_latencies=list(replayed.turn_latencies),
        wall_s=wall_s,
    )
    new = score_record(repaired, config.score)
    accepted = is_accepted(new, score.total, config.min_gain)
    return RepairOutcome(
        record.key, score.total, repaired, new, accepted, proposal.invented_observations, out.text
    )


async def _replay(
    record: TraceRecord, proposal: Proposal, actor: ActorClient, limits: AgentLimits
) -> tuple[AgentResult, str, float]:
    """Run the proposed turns in a fresh episode like the original's; real observations."""
    started = time.perf_counter()
    assert record.toolset_id is not None
    episode_id = await service_call(
        "toolactor",
        actor.create_episode(record.toolset_id, seed=record.seed, grounding=record.grounding),
    )
    context = ToolContext(actor, record.toolset_id, record.tools, episode_id)
    policy = ReplayPolicy(proposal.turns)
    result = await run_agent(
        policy, record.question, context, seed=record.seed, limits=limits,
        system=record.trace.system,
    )  # fmt: skip
    if result.status == "failed" and not policy.ended:
        raise UnitFailed(result.failure or "replay failed")
    return result, episode_id, time.perf_counter() - started


async def run_repairs(
    records: Sequence[TraceRecord],
    scores: dict[str, Score],
    repairer: Policy,
    actor: ActorClient,
    config: RepairConfig,
) -> tuple[list[RepairOutcome], int]:
    """Repair every record that needs it and is not repaired yet; (all outcomes, failed now)."""
    failed = 0
    with (
        JsonlWriter(config.out, key=key_by("of")) as writer,
        JsonlWriter(config.failures_path, keep_empty=False) as failures,
    ):
        outcomes = [
            load_outcome(raw, scores, config.score, f"{config.out}:{n}", config.min_gain)
            for n, raw in enumerate(writer.records, start=1)
        ]
        todo = [r for r in records if needs_repair(scores[r.key]) and r.key not in writer]
        slots = asyncio.Semaphore(config.concurrency)
        bar = tqdm(total=len(todo), desc=f"repairs {repairer.name}", disable=not config.progress)

        async def one(record: TraceRecord) -> None:
            nonlocal failed
            async with slots:
                try:
                    outcome = await asyncio.wait_for(
                        repair_one(record, scores[record.key], repairer, actor, config),
                        timeout=config.unit_timeout_s,
                    )
                except (UnitFailed, TimeoutError, *TRANSIENT) as exc:
                    reason = failure_reason(exc, config.unit_timeout_s)
                    log.warning("repair of %s failed: %s", record.key, reason)
                    failures.write({"of": record.key, "reason": reason, "at": time.time()})
                    failed += 1
                else:
                    writer.write(outcome.to_json())
                    outcomes.append(outcome)
                bar.update(1)

        async with asyncio.TaskGroup() as group:
            for record in todo:
                group.create_task(one(record))
        bar.close()
    return outcomes, failed
