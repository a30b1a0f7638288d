"""The seam for real ("live") tools: what ``live`` and ``record`` modes call instead of the LLM.

A live tool speaks the same contract as a simulated one: an OpenAI function definition in, an
observation valid against ``output_schema`` out. The tool's own failures (a bad expression, code
that crashed or timed out, a query with no hits) come back as observations with an error field,
because an agent learns from tool errors; only a misconfigured tool raises.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from toolsim.errors import ToolsimError


class ToolConfigurationError(ToolsimError):
    """A live tool cannot run here (missing sandbox binary, unreadable corpus, unknown name).

    Raised at construction, never per call: it is the operator's problem, not the agent's.
    """

    code: ClassVar[str] = "tool_misconfigured"


class LiveTool(abc.ABC):
    """A real tool with a strict OpenAI definition and a JSON Schema for its result."""

    name: str
    definition: dict[str, Any]
    """``{"type": "function", "function": {...}}`` in strict form: every property required,
    optional ones nullable, ``additionalProperties: false``."""
    output_schema: dict[str, Any]
    """Draft 2020-12 schema that every result of ``call`` satisfies."""

    @abc.abstractmethod
    async def call(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Run the tool on already-validated arguments and return its observation."""


def function_definition(name: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    """A strict OpenAI function tool definition: all properties required, no extras."""
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "strict": True,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": list(properties),
                "additionalProperties": False,
            },
        },
    }


def object_schema(properties: dict[str, Any]) -> dict[str, Any]:
    """A Draft 2020-12 schema for a closed result object whose fields are all required."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
