"""The agent loop: one question, turn by turn, every tool call over HTTP to the ToolActor.

Shared by trace generation (the policy is a teacher), repair (the repairer's calls are run
again: a repair may not invent observations) and evaluation (the policy under test). A refused
call goes back to the policy as a tool error message, as a live API's error would; the loop
stops at an answer, a grammar error, the tool-call budget or the turn limit.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from toolsim_trainer.clients import ActorClient, ToolResult
from toolsim_trainer.grammar import (
    SYSTEM_PROMPT,
    AssistantTurn,
    GrammarError,
    ToolCallItem,
    ToolResponse,
    ToolTurn,
    Trace,
    extract_answer,
    parse_turn,
    trace_to_messages,
)
from toolsim_trainer.policy import Policy, PolicyError

TRUNCATED_MARK = " …[truncated]"
"""Ends an observation cut before the policy reads it (here and in GRPO's rollout)."""

Status = Literal["answered", "grammar_error", "budget_exhausted", "max_turns", "failed"]


@dataclass(frozen=True)
class AgentLimits:
    max_turns: int = 6
    """Assistant turns before the loop gives up."""
    max_tool_calls: int = 4
    """Tool calls in the whole trace; a turn that would pass it ends the trace."""
    max_tokens: int = 256
    """Tokens per assistant turn."""
    temperature: float = 0.0
    """0 = greedy (deterministic given the seed)."""
    max_observation_chars: int | None = None
    """What the policy reads of each observation: a longer one is cut here and marked
    (``TRUNCATED_MARK``), as GRPO's rollout cuts at ``max_observation_tokens``; None = all.
    Live BM25 passages run to ~750 tokens where grounded simulated ones are ~50."""

    def __post_init__(self) -> None:
        if self.max_turns < 1 or self.max_tool_calls < 0 or self.max_tokens < 1:
            raise ValueError("max_turns and max_tokens must be >= 1, max_tool_calls >= 0")
        if self.max_observation_chars is not None and self.max_observation_chars < 1:
            raise ValueError("max_observation_chars must be >= 1 (or None for no limit)")


@dataclass
class AgentResult:
    trace: Trace
    status: Status
    prediction: str | None = None
    grammar_error: GrammarError | None = None
    failure: str | None = None
    raw_turns: list[str] = field(default_factory=list)
    tool_results: list[ToolResult] = field(default_factory=list)
    turn_latencies: list[dict[str, float]] = field(default_factory=list)

    @property
    def tool_calls(self) -> int:
        return len(self.tool_results)


@dataclass(frozen=True)
class ToolContext:
    """Where the tools are: a toolset on a ToolActor, inside one episode (or no tools)."""

    actor: ActorClient | None
    toolset_id: str | None
    tools: list[dict[str, Any]]
    episode_id: str | None = None


NO_TOOLS = ToolContext(actor=None, toolset_id=None, tools=[])


async def run_agent(
    policy: Policy,
    question: str,
    tools: ToolContext,
    *,
    seed: int,
    limits: AgentLimits,
    system: str = SYSTEM_PROMPT,
) -> AgentResult:
    """Run ``policy`` on ``question`` until it answers or a limit ends the trace."""
    result = AgentResult(trace=Trace(question=question, system=system), status="max_turns")
    for turn_index in range(limits.max_turns):
        messages = trace_to_messages(result.trace)
        try:
            out = await policy.complete(
                messages,
                tools.tools,
                seed=seed + turn_index,
                temperature=limits.temperature,
                max_tokens=limits.max_tokens,
            )
        except PolicyError as exc:
            return _end(result, "failed", failure=f"policy: {exc}")
        result.raw_turns.append(out.text)
        timing = {"policy_s": out.latency_s, "tools_s": 0.0, "tokens": out.completion_tokens}
        result.turn_latencies.append(timing)
        parsed = parse_turn(out.text)
        if isinstance(parsed, GrammarError):
            result.grammar_error = parsed
            result.prediction = extract_answer(out.text)
            return _end(result, "grammar_error")
        if parsed.answer is not None:
            result.trace.turns.append(parsed)
            result.prediction = parsed.answer.strip()
            return _end(result, "answered")
        if result.tool_calls + len(parsed.tool_calls) > limits.max_tool_calls:
            return _end(result, "budget_exhausted")
        turn, responses = await _act(parsed, turn_index, tools, result, limits)
        timing["tools_s"] = responses[1]
        result.trace.turns.extend([turn, responses[0]])
        unavailable = [r for r in result.tool_results if r.code == "tool_unavailable"]
        if unavailable:
            return _end(result, "failed", failure=f"tools: {unavailable[0].content}")
    return result


async def _act(
    parsed: AssistantTurn,
    turn_index: int,
    tools: ToolContext,
    result: AgentResult,
    limits: AgentLimits,
) -> tuple[AssistantTurn, tuple[ToolTurn, float]]:
    """Send the turn's calls (ids assigned here) and build the tool turn."""
    calls = tuple(
        ToolCallItem(c.name, c.arguments, id=f"call_{turn_index}_{k}")
        for k, c in enumerate(parsed.tool_calls)
    )
    turn = AssistantTurn(parsed.think, calls, None)
    if tools.actor is None or tools.toolset_id is None:
        observed = [_no_tools(c) for c in calls]
        seconds = 0.0
    else:
        started = time.perf_counter()  # not stats.wait_s: concurrent traces share the client
        observed = await tools.actor.call_tools(
            tools.toolset_id, calls, episode_id=tools.episode_id
        )
        seconds = time.perf_counter() - started
    result.tool_results.extend(observed)
    cap = limits.max_observation_chars
    tool_turn = ToolTurn(
        tuple(ToolResponse(r.tool_call_id, clip_observation(r.content, cap)) for r in observed)
    )
    return turn, (tool_turn, seconds)


def clip_observation(content: str, max_chars: int | None) -> str:
    """``content`` as the policy reads it: cut at ``max_chars`` and marked when longer."""
    if max_chars is None or len(content) <= max_chars:
        return content
    return content[:max_chars] + TRUNCATED_MARK


def _no_tools(call: ToolCallItem) -> ToolResult:
    content = json.dumps({"error": {"code": "tool_not_found", "message": "no tools here"}})
    return ToolResult(call.id, content, ok=False, code="tool_not_found")


def _end(result: AgentResult, status: Status, *, failure: str | None = None) -> AgentResult:
    result.status = status
    result.failure = failure
    return result
