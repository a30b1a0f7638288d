"""A cheap in-process LLM backend for unit tests of everything around the model.

It produces a schema-valid instance for any simple JSON Schema (varying with the seed), counts
its generations, and can be told to fail, stall or emit bad output a number of times.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from toolsim.errors import BackendUnavailableError
from toolsim.llm.base import Generation, GenerationRequest, LLMBackend


def instance(schema: dict[str, Any], seed: int) -> Any:
    if "const" in schema:  # what a constrained decoder is forced to write
        return schema["const"]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next(k for k in kind if k != "null")
    if "enum" in schema:
        return schema["enum"][seed % len(schema["enum"])]
    if kind == "object":
        props = schema.get("properties", {})
        return {name: instance(sub, seed) for name, sub in props.items()}
    if kind == "array":
        if "prefixItems" in schema:
            return [instance(item, seed) for item in schema["prefixItems"]]
        return [instance(schema.get("items", {"type": "string"}), seed)]
    if kind == "integer":
        return seed % 1000
    if kind == "number":
        return (seed % 1000) / 10
    if kind == "boolean":
        return seed % 2 == 0
    text = f"value_{seed}"
    return text + "x" * max(0, schema.get("minLength", 0) - len(text))


class ScriptedBackend(LLMBackend):
    def __init__(self, *, delay_s: float = 0.0) -> None:
        self.model_name = "scripted"
        self.delay_s = delay_s
        self.calls: list[GenerationRequest] = []
        self.bad_outputs: list[str] = []
        """Texts returned (one per generation, first in first out) before valid ones."""
        self.unavailable = False
        self.is_ready = True

    async def generate(self, request: GenerationRequest) -> Generation:
        self.calls.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.unavailable:
            raise BackendUnavailableError("scripted backend is down")
        if self.bad_outputs:
            text = self.bad_outputs.pop(0)
            return Generation(text, "length" if text == "<length>" else "stop")
        if request.choices is not None:
            return Generation(request.choices[request.seed % len(request.choices)], "stop", 10, 1)
        value = instance(request.json_schema or {"type": "string"}, request.seed)
        return Generation(orjson.dumps(value).decode(), "stop", 10, 10)

    async def ready(self) -> bool:
        return self.is_ready
