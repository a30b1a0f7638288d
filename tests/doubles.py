"""A cheap in-process LLM backend for unit tests of everything around the model.

It produces a schema-valid instance for any simple JSON Schema (varying with the seed), counts
its generations, and can be told to fail, stall or emit bad output a number of times. Like a
model that reads its prompt, it writes a call's argument values into the fields named after
them and a distinct value into every other string, so its observations pass the ``quality``
gate (a test that wants a failing one scripts it with ``bad_outputs``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from toolsim.errors import BackendUnavailableError
from toolsim.llm.base import Generation, GenerationRequest, LLMBackend
from toolsim.schema_inference import fields_schema


def instance(
    schema: dict[str, Any], seed: int, echo: dict[str, Any] | None = None, tag: str = ""
) -> Any:
    """A valid instance: ``echo`` maps field names to the values to write there (a call's
    arguments); ``tag`` keeps the strings of different fields and items apart."""
    if "const" in schema:  # what a constrained decoder is forced to write
        return schema["const"]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next(k for k in kind if k != "null")
    if "enum" in schema:
        return schema["enum"][seed % len(schema["enum"])]
    if kind == "object":
        props = schema.get("properties", {})
        return {
            name: _echoed(name, sub, echo) or instance(sub, seed, echo, tag + _letter(i))
            for i, (name, sub) in enumerate(props.items())
        }
    if kind == "array":
        if "prefixItems" in schema:
            return [instance(item, seed, echo, tag) for item in schema["prefixItems"]]
        count = max(1, schema.get("minItems", 1))
        items = schema.get("items", {"type": "string"})
        return [instance(items, seed, echo, tag + _letter(i)) for i in range(count)]
    if kind == "integer":
        return seed % 1000
    if kind == "number":
        return (seed % 1000) / 10
    if kind == "boolean":
        return seed % 2 == 0
    text = f"value_{seed}" + (f"_{tag}" if tag else "")
    return text + "x" * max(0, schema.get("minLength", 0) - len(text))


def _letter(i: int) -> str:
    """Tags are letters: a name ending in a digit reads as numbered (``schema_inference``)."""
    return chr(ord("a") + i % 26)


def _echoed(name: str, schema: Any, echo: dict[str, Any] | None) -> str | None:
    value = (echo or {}).get(name)
    free = isinstance(schema, dict) and schema.get("type") == "string" and "enum" not in schema
    return value if free and isinstance(value, str) and value else None


def call_arguments(request: GenerationRequest) -> dict[str, Any]:
    """The arguments of the call a simulator prompt is about: the JSON object in its last
    user message (``name({...})``), or nothing."""
    text = request.messages[-1]["content"] if request.messages else ""
    start, end = text.find("{"), text.rfind("}")
    try:
        value = orjson.loads(text[start : end + 1]) if 0 <= start < end else None
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class ScriptedBackend(LLMBackend):
    def __init__(self, *, delay_s: float = 0.0) -> None:
        self.model_name = "scripted"
        self.delay_s = delay_s
        self.calls: list[GenerationRequest] = []
        """Observation (and ToolMaker) generations, in order."""
        self.inferences: list[GenerationRequest] = []
        """Output schema inferences (``toolsim.schema_inference``), kept apart from ``calls``
        so a test counts the observations it caused."""
        self.bad_outputs: list[str] = []
        """Texts returned (one per generation, first in first out) before valid ones."""
        self.unavailable = False
        self.is_ready = True
        self.in_flight = 0
        """Generations running now (entered ``generate``, not yet returned)."""
        self.peak_in_flight = 0
        """The most generations ever running at once."""

    async def generate(self, request: GenerationRequest) -> Generation:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._generate(request)
        finally:
            self.in_flight -= 1

    async def _generate(self, request: GenerationRequest) -> Generation:
        inferring = request.json_schema == fields_schema()
        (self.inferences if inferring else self.calls).append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.unavailable:
            raise BackendUnavailableError("scripted backend is down")
        if self.bad_outputs:
            text = self.bad_outputs.pop(0)
            return Generation(text, "length" if text == "<length>" else "stop")
        if request.choices is not None:
            return Generation(request.choices[request.seed % len(request.choices)], "stop", 10, 1)
        schema = request.json_schema or {"type": "string"}
        value = instance(schema, request.seed, call_arguments(request))
        return Generation(orjson.dumps(value).decode(), "stop", 10, 10)

    async def ready(self) -> bool:
        return self.is_ready
