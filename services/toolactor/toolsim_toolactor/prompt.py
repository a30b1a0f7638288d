"""The simulator prompt: what the LLM is told about the tool, the facts and the episode.

Bump ``PROMPT_VERSION`` whenever the text changes: it is part of every cache key, so old
observations are not replayed for a prompt that would no longer produce them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from toolsim.toolsets import Tool

PROMPT_VERSION = "1"
MAX_PASSAGE_CHARS = 600
MAX_GROUNDING_CHARS = 3000
MAX_EVENT_CHARS = 500


@dataclass(frozen=True)
class EpisodeContext:
    """What the simulator knows of the episode a call belongs to."""

    episode_id: str
    grounding: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def build_messages(
    tool: Tool, arguments: dict[str, Any], episode: EpisodeContext | None
) -> list[dict[str, str]]:
    parts = [
        f"You simulate the tool `{tool.name}`. {tool.description}".strip(),
        f"Its arguments follow this JSON Schema: {_json(tool.parameters)}",
        "Reply with only the JSON object the real tool would return, following this JSON "
        f"Schema: {_json(tool.output_schema)}. Be realistic and specific.",
    ]
    if episode is not None and episode.grounding:
        parts.append(_grounding_text(episode.grounding))
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


def _history_text(history: list[dict[str, Any]]) -> str:
    lines = ["Earlier calls in this episode and what they returned (stay consistent):"]
    for event in history:
        call = f"{event['tool']}({_json(event['arguments'])})"
        lines.append(f"{call} -> {event['observation'][:MAX_EVENT_CHARS]}")
    return "\n".join(lines)
