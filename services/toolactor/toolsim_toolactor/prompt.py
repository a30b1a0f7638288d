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

PROMPT_VERSION = "7"
ROLE_TEXT = "You simulate tools: each call gets the JSON object the real tool would return."
REPLY_TEXT = "Reply with only the JSON object the real tool would return"
EXAMPLE_NAME = "get_tide_times"
EXAMPLE_DESCRIPTION = "High and low tide at a port today."
EXAMPLE_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"port": {"type": "string", "description": "Port name"}},
    "required": ["port"],
}
EXAMPLE_OUTPUT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "port": {"type": "string", "description": "The port asked about"},
        "high_tide": {"type": "string", "description": "Time of high tide, HH:MM"},
        "low_tide": {"type": "string", "description": "Time of low tide, HH:MM"},
        "height_m": {"type": "number", "description": "Height of high tide in metres"},
    },
    "required": ["port", "high_tide", "low_tide", "height_m"],
}
EXAMPLE_ARGUMENTS: dict[str, Any] = {"port": "Brest"}
EXAMPLE_OBSERVATION: dict[str, Any] = {
    "port": "Brest",
    "high_tide": "06:42",
    "low_tide": "12:58",
    "height_m": 6.1,
}
"""A worked example for a tool of no common domain: a call and a realistic observation."""
PROMPT_TEXTS = (
    ROLE_TEXT,
    REPLY_TEXT,
    "following this JSON Schema",
    "Be realistic and specific.",
    "Its arguments follow this JSON Schema",
    EXAMPLE_DESCRIPTION,
    *(str(p["description"]) for p in EXAMPLE_OUTPUT["properties"].values()),
)
"""The prompt's fixed texts: an observation that copies them is flagged (``quality``)."""
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
    """The chat the simulator decodes from. An evidence call keeps the layout the fidelity
    work measured (facts, tool, schema, all in the system turn); every other call is shown
    as a turn after a worked example for another tool."""
    if evidence is not None:
        return _evidence_messages(tool, arguments, episode, evidence)
    parts: list[str] = []
    if episode is not None and episode.grounding:
        parts.append(_grounding_text(episode.grounding))
    parts.append(ROLE_TEXT)
    if episode is not None and episode.history:
        parts.append(_history_text(episode.history))
    example = _call_text(
        EXAMPLE_NAME, EXAMPLE_DESCRIPTION, EXAMPLE_PARAMETERS, EXAMPLE_OUTPUT, EXAMPLE_ARGUMENTS
    )
    call = _call_text(tool.name, tool.description, tool.parameters, tool.output_schema, arguments)
    return [
        {"role": "system", "content": "\n\n".join(parts)},
        {"role": "user", "content": example},
        {"role": "assistant", "content": _json(EXAMPLE_OBSERVATION)},
        {"role": "user", "content": call},
    ]


def _call_text(
    name: str,
    description: str,
    parameters: dict[str, Any],
    output_schema: dict[str, Any],
    arguments: dict[str, Any],
) -> str:
    return "\n".join(
        [
            f"Tool: {name}",
            f"About: {description}".strip(),
            f"Call: {name}({_json(arguments)})",
            _facts_text(arguments),
            "Returns:",
            *fields_text(output_schema),
        ]
    )


def fields_text(schema: dict[str, Any], indent: str = "") -> list[str]:
    """The output fields as lines, ``- name (type): description``, nested lists and objects
    indented under their field; a schema that is not a plain object is shown as JSON."""
    properties = schema.get("properties") if schema.get("type") == "object" else None
    if not isinstance(properties, dict) or not properties:
        return [f"{indent}- JSON Schema: {_json(schema)}"]
    lines: list[str] = []
    for name, node in properties.items():
        node = node if isinstance(node, dict) else {}
        lines.append(f"{indent}- {name} ({_kind(node)})" + _described(node))
        items = node.get("items") if node.get("type") == "array" else None
        inner = items if isinstance(items, dict) else node
        if inner.get("type") == "object" and isinstance(inner.get("properties"), dict):
            lines.extend(fields_text(inner, indent + "  "))
    return lines


def _kind(node: dict[str, Any]) -> str:
    if "enum" in node:
        return "one of " + ", ".join(_value_text(v) for v in node["enum"])
    kind = node.get("type", "any")
    if isinstance(kind, list):
        kind = " or ".join(str(k) for k in kind)
    if kind == "array":
        items = node.get("items")
        inner: dict[str, Any] = items if isinstance(items, dict) else {}
        return f"list of {_kind(inner) if inner.get('type') != 'object' else 'objects'}"
    return str(kind)


def _described(node: dict[str, Any]) -> str:
    description = node.get("description")
    return f": {description}" if isinstance(description, str) and description else ""


def _facts_text(arguments: dict[str, Any]) -> str:
    """The argument values as facts the observation is about (``city is Paris``)."""
    facts = [f"{name} is {_value_text(value)}" for name, value in arguments.items()]
    return f"Facts: {'; '.join(facts)}." if facts else "Facts: none."


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else _json(value)


def _evidence_messages(
    tool: Tool, arguments: dict[str, Any], episode: EpisodeContext | None, evidence: Evidence
) -> list[dict[str, str]]:
    parts = [_evidence_text(evidence), f"You simulate the tool `{tool.name}`. {tool.description}"]
    if evidence.copied:  # the decoder writes the excerpts' shape
        parts.append(f"{REPLY_TEXT}.")
    else:
        parts.append(
            f"{REPLY_TEXT}, following this JSON "
            f"Schema: {_json(tool.output_schema)}. Be realistic and specific."
        )
    if episode is not None and episode.history:
        parts.append(_history_text(episode.history))
    return [
        {"role": "system", "content": "\n\n".join(p.strip() for p in parts)},
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
