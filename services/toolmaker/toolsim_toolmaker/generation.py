"""Task classification and interface generation with the LLM, constrained decoding throughout.

Classification decodes one of the taxonomy's names (choice-constrained). Interface generation
decodes a compact *tool spec* constrained to ``spec_schema(n)``: names by pattern, typed
parameter and return lists. ``spec_to_tool`` then writes the OpenAI strict-form definition and
the output schema from it, so what the model must get right is small, and what the API returns
is always well formed. Anything validation still refuses is regenerated with another seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from jsonschema import Draft202012Validator

from toolsim.errors import GenerationFailedError, InvalidToolDefinitionError
from toolsim.llm.base import GenerationRequest, LLMBackend
from toolsim.toolsets import Toolset, build_toolset
from toolsim_toolmaker.metrics import MakerMetrics
from toolsim_toolmaker.taxonomy import CLASS_WORDS
from toolsim_toolmaker.validation import check_strict_tool

PROMPT_VERSION = "3"
SEED_STRIDE = 1_000_003
PRIMITIVES = ["string", "number", "integer", "boolean"]
MAX_STRING_CHARS = 400


def _field_schema(max_items: int) -> dict[str, Any]:
    return {
        "type": "array",
        "minItems": 1,
        "maxItems": max_items,
        "items": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z][a-z0-9_]{1,30}$"},
                "type": {"type": "string", "enum": PRIMITIVES},
                "description": {"type": "string", "minLength": 3, "maxLength": 100},
                "required": {"type": "boolean"},
            },
            "required": ["name", "type", "description", "required"],
            "additionalProperties": False,
        },
    }


def spec_schema(max_tools: int) -> dict[str, Any]:
    """The JSON Schema generation is constrained to."""
    return {
        "type": "object",
        "properties": {
            "tools": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_tools,
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "pattern": "^[a-z][a-z0-9_]{2,40}$"},
                        "description": {"type": "string", "minLength": 10, "maxLength": 200},
                        "parameters": _field_schema(4),
                        "returns": _field_schema(5),
                    },
                    "required": ["name", "description", "parameters", "returns"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["tools"],
        "additionalProperties": False,
    }


Utilities = Mapping[str, tuple[dict[str, Any], dict[str, Any]]]
"""Utility tools to merge in: name → (definition, output schema)."""


@dataclass(frozen=True)
class GeneratedTools:
    toolset: Toolset
    """The generated tools with the utilities merged in, validated once."""
    attempts: int


def spec_to_tool(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A tool spec → (OpenAI strict definition, output schema)."""
    properties: dict[str, Any] = {}
    for field in spec["parameters"]:
        kind: Any = field["type"] if field["required"] else [field["type"], "null"]
        properties[field["name"]] = {"type": kind, "description": field["description"]}
    definition = {
        "type": "function",
        "function": {
            "name": spec["name"],
            "description": spec["description"],
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": list(properties),
                "additionalProperties": False,
            },
            "strict": True,
        },
    }
    returns: dict[str, Any] = {}
    for field in spec["returns"]:
        sub: dict[str, Any] = {"type": field["type"], "description": field["description"]}
        if field["type"] == "string":
            sub["maxLength"] = MAX_STRING_CHARS
        returns[field["name"]] = sub
    output = {
        "type": "object",
        "properties": returns,
        "required": list(returns),
        "additionalProperties": False,
    }
    return definition, output


class ToolGenerator:
    def __init__(
        self,
        backend: LLMBackend,
        metrics: MakerMetrics,
        *,
        attempts: int,
        temperature: float,
        max_tokens: int,
    ) -> None:
        self._backend = backend
        self._metrics = metrics
        self._attempts = attempts
        self._temperature = temperature
        self._max_tokens = max_tokens

    async def classify(self, task: str, seed: int) -> str:
        request = GenerationRequest(
            messages=classification_messages(task),
            choices=list(CLASS_WORDS),
            seed=seed,
            temperature=0.0,
            max_tokens=16,
        )
        generation = await self._backend.generate(request)
        word = generation.text.strip()
        if word not in CLASS_WORDS:  # the constraint makes this a backend fault
            raise GenerationFailedError(f"classification returned {word!r}, not a task kind")
        return CLASS_WORDS[word][0]

    async def generate(
        self,
        task: str,
        task_class: str,
        max_tools: int,
        utilities: Utilities,
        seed: int,
        *,
        stateful: bool,
    ) -> GeneratedTools:
        """Task-specific tools (a generated one named like a utility gives way to it), merged
        with ``utilities`` into one toolset; ``stateful`` flags the generated ones."""
        reasons: list[str] = []
        for attempt in range(self._attempts):
            self._metrics.generations.inc()
            request = GenerationRequest(
                messages=interface_messages(task, task_class, max_tools),
                json_schema=spec_schema(max_tools),
                seed=(seed + attempt * SEED_STRIDE) % 2**31,
                temperature=self._temperature,
                max_tokens=self._max_tokens,
            )
            generation = await self._backend.generate(request)
            if generation.finish_reason == "length":
                reason = "length"
            else:
                toolset, reason = _accept(generation.text, utilities, max_tools, stateful)
                if toolset is not None:
                    return GeneratedTools(toolset, attempt + 1)
            self._metrics.invalid_generations.labels(reason).inc()
            reasons.append(reason)
        raise GenerationFailedError(
            f"no valid toolset after {self._attempts} generations ({', '.join(reasons)})"
        )


def _accept(
    text: str, utilities: Utilities, max_tools: int, stateful: bool
) -> tuple[Toolset | None, str]:
    """The toolset a generation makes, built (and so validated) once, or the reason not."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None, "invalid_json"
    # The decoder was constrained to this schema; check anyway: a backend may ignore it.
    if not Draft202012Validator(spec_schema(max_tools)).is_valid(value):
        return None, "spec_schema"
    specs = value["tools"]
    tools, outputs = [], {}
    for spec in specs:
        if spec["name"] in utilities:
            continue  # the utility tool of that name will be merged in
        definition, output = spec_to_tool(spec)
        tools.append(definition)
        outputs[spec["name"]] = output
    if not tools:
        return None, "no_tools"
    flags = {name: stateful for name in outputs}
    try:
        toolset = build_toolset(
            tools + [definition for definition, _ in utilities.values()],
            {**outputs, **{name: output for name, (_, output) in utilities.items()}},
            flags,
        )
        for i, tool in enumerate(tools):
            check_strict_tool(tool, outputs[tool["function"]["name"]], f"tools[{i}]")
    except InvalidToolDefinitionError:
        return None, "validation"
    return toolset, ""


def classification_messages(task: str) -> list[dict[str, str]]:
    kinds = ", ".join(f"{word} ({CLASS_WORDS[word][1]})" for word in CLASS_WORDS)
    return [
        {
            "role": "system",
            "content": f"What kind of task is this? Answer with one word: {kinds}.",
        },
        {"role": "user", "content": task},
    ]


def interface_messages(task: str, task_class: str, max_tools: int) -> list[dict[str, str]]:
    example = {
        "tools": [
            {
                "name": "lookup_population",
                "description": "Look up the population of a city in a given year.",
                "parameters": [
                    {
                        "name": "city",
                        "type": "string",
                        "description": "City name",
                        "required": True,
                    },
                    {
                        "name": "year",
                        "type": "integer",
                        "description": "Census year",
                        "required": False,
                    },
                ],
                "returns": [
                    {
                        "name": "population",
                        "type": "integer",
                        "description": "Inhabitants",
                        "required": True,
                    },
                    {
                        "name": "source",
                        "type": "string",
                        "description": "Where it comes from",
                        "required": True,
                    },
                ],
            }
        ]
    }
    return [
        {
            "role": "system",
            "content": "You design API tools an assistant would call to solve a task. Write "
            f"1 to {max_tools} specific tools with snake_case names, a one-sentence "
            "description, typed parameters and typed return fields, as JSON like this "
            f"example:\n{orjson.dumps(example).decode()}",
        },
        {"role": "user", "content": f"Task ({task_class}): {task}"},
    ]
