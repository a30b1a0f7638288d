"""The simulator prompt: what the LLM is told about the tool, the facts and the episode.

Bump ``PROMPT_VERSION`` whenever the text changes: it is part of every cache key, so old
observations are not replayed for a prompt that would no longer produce them.

The facts come first: every call of an episode (and every rollout of a group on the same
question) then shares the longest possible prompt prefix, which a server with prefix caching
(vLLM) computes once. An evidence call (``fidelity.Evidence``) shows only the short excerpts
its role allows, and names the answer as the fact to state when the call is useful.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from toolsim.toolsets import Tool
from toolsim_toolactor.fidelity import Evidence

PROMPT_VERSION = "2"
MAX_PASSAGE_CHARS = 600
MAX_GROUNDING_CHARS = 3000
MAX_EVENT_CHARS = 500


@dataclass(frozen=True)
class EpisodeContext:
    """What the simulator knows of the episode a call belongs to."""

    episode_id: str
    grounding: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    grounding_digest: str | None = None
    """Digest of the grounding facts (not of ``usefulness``): the key of their prepared form."""


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def build_messages(
    tool: Tool,
    arguments: dict[str, Any],
    episode: EpisodeContext | None,
    evidence: Evidence | None = None,
) -> list[dict[str, str]]:
    parts: list[str] = []
    if evidence is not None:
        parts.append(_evidence_text(evidence))
    elif episode is not None and episode.grounding:
        parts.append(_grounding_text(episode.grounding))
    parts.append(f"You simulate the tool `{tool.name}`. {tool.description}".strip())
    if evidence is None:  # an evidence call's arguments are one query: the schema is noise
        parts.append(f"Its arguments follow this JSON Schema: {_json(tool.parameters)}")
    if evidence is not None and evidence.copied:  # the decoder writes the excerpts' shape
        parts.append("Reply with only the JSON object the real tool would return.")
    else:
        parts.append(
            "Reply with only the JSON object the real tool would return, following this JSON "
            f"Schema: {_json(tool.output_schema)}. Be realistic and specific."
        )
    if episode is not None and episode.history:
        parts.append(_history_text(episode.history))
    return [
        {"role": "system", "content": "\n\n".join(parts)},
        {"role": "user", "content": f"{tool.name}({_json(arguments)})"},
    ]


def _grounding_text(grounding: dict[str, Any]) -> str:
    lines = ["Known facts. The observation must agree with them:"]
    if grounding.get("question"):
        lines.append(f"Question: {grounding['question']}")
    if grounding.get("answer"):
        lines.append(f"Answer: {grounding['answer']}")
    budget = MAX_GROUNDING_CHARS
    for passage in grounding.get("passages", []):
        text = f"- {passage.get('title', '')}: {passage['text'][:MAX_PASSAGE_CHARS]}"
        if len(text) > budget:
            break
        budget -= len(text)
        lines.append(text)
    return "\n".join(lines)


def _evidence_text(evidence: Evidence) -> str:
    facts = evidence.facts
    excerpts = [f"- {p.title}: {p.text}" if p.title else f"- {p.text}" for p in evidence.passages]
    if evidence.role == "useful":
        lines = ["Known facts. Copy them into the observation word for word:", *excerpts]
        if facts.question:
            lines.append(f"Question: {facts.question}")
        if facts.golds:
            lines.append(f"Answer: {facts.golds[0]}")
            lines.append(f"The observation must state this answer: {facts.golds[0]}")
        return "\n".join(lines)
    lines = ["Related facts. They do not answer the question; use only these:", *excerpts]
    if facts.question:
        lines.append(f"This call must not answer the question: {facts.question}")
    lines.append("Return plausible results about related topics only.")
    return "\n".join(lines)


def _history_text(history: list[dict[str, Any]]) -> str:
    lines = ["Earlier calls in this episode and what they returned (stay consistent):"]
    for event in history:
        call = f"{event['tool']}({_json(event['arguments'])})"
        lines.append(f"{call} -> {event['observation'][:MAX_EVENT_CHARS]}")
    return "\n".join(lines)
