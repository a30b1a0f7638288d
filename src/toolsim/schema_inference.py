"""Output schemas for tools that arrive without one, inferred once with the LLM.

A tool registered, sent inline or imported without an output schema used to get
``{"result": "<text>"}``, and a small model fills a free text field with whatever it last
read: the schema's own description, punctuation, a formula. A weather tool should return a
temperature and conditions. So such a tool gets a schema inferred from its name, description
and parameters, the way the ToolMaker designs tools: the model decodes a compact list of
named, typed fields under a JSON Schema (``fields_schema``: names by pattern, a closed set
of types), shown three worked examples from other domains, and code writes the output
schema from it (``fields_to_schema``): the tool's simple arguments echoed back (a real API
restates what it was asked, and an observation that names its arguments is grounded in the
call), then the fields the model found, de-duplicated; every field required, strings
bounded, the object closed, so the result is always well formed and in OpenAI strict form.
It carries no descriptions: there is no prose in it for the simulator to copy.

Inference runs once per tool definition: the result is kept by a digest of the definition,
the model and ``INFERENCE_VERSION`` (in process, and in a shared ``BytesStore`` when one is
given: the ToolActor passes its observation cache, Redis when configured), and identical
in-flight inferences share one generation. A generation with no usable field is retried
with another seed (greedy first, then sampled); when every attempt fails, the tool gets
``FALLBACK_OUTPUT_SCHEMA`` (counted and logged, never stored, so a later registration tries
again). A backend that is down fails the request (503) rather than storing the fallback.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from toolsim.jsonutil import digest
from toolsim.llm.base import GenerationRequest, LLMBackend
from toolsim.singleflight import SingleFlight
from toolsim.toolsets import DEFAULT_OUTPUT_SCHEMA

log = logging.getLogger(__name__)

INFERENCE_VERSION = "1"
"""Part of the inference key: bump it when the prompt or the field checks change."""
FALLBACK_OUTPUT_SCHEMA = DEFAULT_OUTPUT_SCHEMA
"""What a tool gets when inference is off or fails: one bounded text, no prose to copy."""
FIELD_TYPES = ("string", "number", "integer", "boolean")
MAX_FOUND = 4
"""Most fields the model adds to the echoed arguments."""
MAX_ECHOED = 4
"""Most arguments echoed back (a real API often restates what it was asked)."""
STRING_CHARS = 80
"""Longest string an inferred schema allows: long free text is where small models drift."""
GENERIC_NAMES = frozenset({"result", "results", "output", "response", "data", "value", "info"})
"""Field names that say nothing of the tool: a schema made of them is no better than none."""
SEED_STRIDE = 1_000_003
MEMO_SIZE = 4096
Outcome = str
"""``inferred`` (generated now), ``cached`` (remembered), ``fallback`` (every attempt failed)."""


class BytesStore(Protocol):
    """Where inferred schemas are shared (the ToolActor's ``ObservationCache`` is one)."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes) -> None: ...


def fields_schema() -> dict[str, Any]:
    """The JSON Schema inference decodes under: a short list of named, typed fields. No
    descriptions: on SmolLM2-135M they came out as copies of the tool's description, which
    the simulator then copied into observations; a name such as ``temperature_c`` says it."""
    return {
        "type": "object",
        "properties": {
            "fields": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_FOUND,
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "pattern": "^[a-z][a-z0-9_]{1,30}$"},
                        "type": {"type": "string", "enum": list(FIELD_TYPES)},
                    },
                    "required": ["name", "type"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["fields"],
        "additionalProperties": False,
    }


def found_fields(
    fields: list[dict[str, Any]], parameters: Mapping[str, Any], tool_name: str = ""
) -> list[Any]:
    """The model's fields the tool finds out: first of each name; arguments, variants of an
    argument (``target_language_translation``), numbered names (``top_headlines_2022``),
    generic names and the tool's own name left out, and so is a vague name another one
    refines (``restaurant`` beside ``restaurant_name``), or ``name``/``title`` when the one
    string argument already names the thing (the 135M model repeats and restates itself, and
    each twin field invites a twin value; code echoes the arguments)."""
    properties = parameters.get("properties", {}) or {}
    arguments = set(properties) | {tool_name}
    named = [n for n, s in properties.items() if isinstance(s, dict) and s.get("type") == "string"]
    seen: set[str] = set()
    kept = []
    for item in fields:
        name = item["name"]
        variant = any(name.startswith(f"{a}_") for a in arguments) or name[-1].isdigit()
        if name in seen or name in arguments or name in GENERIC_NAMES or variant:
            continue
        if name in ("name", "title") and len(named) == 1:
            continue
        seen.add(name)
        kept.append(item)
    return [f for f in kept if not any(o["name"].startswith(f"{f['name']}_") for o in kept)]


def fields_to_schema(found: list[dict[str, Any]], parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The output schema: the tool's simple arguments echoed back, then the found fields;
    every field required, strings 1 to ``STRING_CHARS`` characters, the object closed."""
    properties: dict[str, Any] = {}
    for name, spec in list(_echoable(parameters).items())[:MAX_ECHOED]:
        properties[name] = spec
    for item in found:
        properties[item["name"]] = _bounded({"type": item["type"]})
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _echoable(parameters: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Arguments of one primitive type (nullable allowed), as output fields."""
    out: dict[str, dict[str, Any]] = {}
    for name, spec in (parameters.get("properties") or {}).items():
        if not isinstance(spec, dict):
            continue
        kind = spec.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"]
            kind = kinds[0] if len(kinds) == 1 else None
        if kind not in FIELD_TYPES:
            continue
        node: dict[str, Any] = {"type": kind}
        if isinstance(spec.get("enum"), list) and all(
            isinstance(e, str | int | float) for e in spec["enum"]
        ):
            node["enum"] = [e for e in spec["enum"] if e is not None]
        out[str(name)] = _bounded(node)
    return out


def _bounded(node: dict[str, Any]) -> dict[str, Any]:
    if node.get("type") == "string" and "enum" not in node:
        return {**node, "minLength": 1, "maxLength": STRING_CHARS}
    return node


EXAMPLES = (
    (
        "lookup_population",
        "Population of a city in a given year.",
        ("city", "year"),
        (("population", "integer"), ("census_office", "string")),
    ),
    (
        "get_recipe",
        "A recipe for a dish.",
        ("dish",),
        (("ingredients", "string"), ("steps", "string"), ("prep_minutes", "integer")),
    ),
    (
        "check_domain",
        "Whether a web domain is free to register.",
        ("domain",),
        (("available", "boolean"), ("price_usd", "number"), ("registrar", "string")),
    ),
)
"""Worked examples from three other domains: one alone is copied field for field."""
SYSTEM_TEXT = (
    "You design APIs. For a tool, list the fields of the JSON object it returns beyond its "
    "arguments: what it looks up or computes. Use snake_case names, with units where they help."
)


def inference_messages(definition: Mapping[str, Any]) -> list[dict[str, str]]:
    """The prompt: the task, three worked examples as turns, then the tool."""
    function = definition["function"]
    messages = [{"role": "system", "content": SYSTEM_TEXT}]
    for name, description, arguments, fields in EXAMPLES:
        answer = {"fields": [{"name": n, "type": t} for n, t in fields]}
        messages.append({"role": "user", "content": _tool_text(name, description, arguments)})
        messages.append({"role": "assistant", "content": orjson.dumps(answer).decode()})
    parameters = function.get("parameters") or {}
    names = tuple(str(n) for n in (parameters.get("properties") or {}))
    tool = _tool_text(str(function["name"]), str(function.get("description") or ""), names)
    messages.append({"role": "user", "content": tool})
    return messages


def _tool_text(name: str, description: str, arguments: tuple[str, ...]) -> str:
    listed = ", ".join(arguments) or "none"
    return f"Tool: {name}\nDescription: {description}\nArguments: {listed}"


@dataclass(frozen=True)
class Completed:
    """Output schemas for every tool, and the names of the tools whose schema was inferred."""

    output_schemas: dict[str, dict[str, Any]]
    inferred: tuple[str, ...]


class OutputSchemaInferrer:
    def __init__(
        self,
        backend: LLMBackend,
        *,
        store: BytesStore | None = None,
        attempts: int = 3,
        temperature: float = 0.7,
        max_tokens: int = 200,
        presence_penalty: float = 0.0,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> None:
        self._backend = backend
        self._store = store
        self._attempts = attempts
        self._temperature = temperature
        self._max_tokens = max_tokens
        self._presence_penalty = presence_penalty
        self._on_outcome = on_outcome or (lambda outcome: None)
        self._memo: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._flights: SingleFlight[dict[str, Any] | None] = SingleFlight()

    async def complete(
        self,
        tools: list[dict[str, Any]],
        output_schemas: Mapping[str, Any] | None,
        *,
        skip: frozenset[str] = frozenset(),
    ) -> Completed:
        """The given schemas plus one for every tool without one (not in ``skip``), in
        order. A tool whose inference fails keeps no schema here, and ``build_toolset`` gives
        it ``FALLBACK_OUTPUT_SCHEMA``. Call it with definitions ``build_toolset`` accepted."""
        schemas = dict(output_schemas or {})
        inferred: list[str] = []
        for definition in tools:
            name = _name(definition)
            if name is None or name in schemas or name in skip:
                continue
            schema = await self.infer(definition)
            if schema is not None:
                schemas[name] = schema
                inferred.append(name)
        return Completed(schemas, tuple(inferred))

    async def infer(self, definition: Mapping[str, Any]) -> dict[str, Any] | None:
        """The inferred output schema of one tool, or None when every attempt failed."""
        key = "schema:" + digest(
            {"v": INFERENCE_VERSION, "m": self._backend.model_name, "d": definition}
        )
        schema = self._memo.get(key)
        if schema is None and self._store is not None:
            stored = await self._store.get(key)
            schema = orjson.loads(stored) if stored is not None else None
        if schema is not None:
            self._on_outcome("cached")
            self._remember(key, schema)
            return schema
        result, joined = await self._flights.run(key, lambda: self._generate(key, definition))
        if joined:
            self._on_outcome("cached")
        return result

    async def _generate(self, key: str, definition: Mapping[str, Any]) -> dict[str, Any] | None:
        function = definition["function"]
        parameters = function.get("parameters") or {}
        reasons: list[str] = []
        for attempt in range(self._attempts):
            request = GenerationRequest(
                messages=inference_messages(definition),
                json_schema=fields_schema(),
                seed=(attempt * SEED_STRIDE) % 2**31,
                temperature=self._temperature if attempt else 0.0,
                max_tokens=self._max_tokens,
                presence_penalty=self._presence_penalty,
            )
            generation = await self._backend.generate(request)
            found: list[Any] = []
            reason = "length" if generation.finish_reason == "length" else None
            if reason is None:
                fields, reason = _parse(generation.text)
                found = found_fields(fields, parameters, str(function.get("name") or ""))
                if reason is None and not found:
                    reason = "no_new_fields"
            if reason is None:
                schema = fields_to_schema(found, parameters)
                self._remember(key, schema)
                if self._store is not None:
                    await self._store.set(key, orjson.dumps(schema))
                self._on_outcome("inferred")
                return schema
            reasons.append(reason)
        self._on_outcome("fallback")
        log.warning(
            "no output schema inferred for tool %r after %d generations (%s); using the "
            "fallback schema",
            function.get("name"),
            self._attempts,
            ", ".join(reasons),
        )
        return None

    def _remember(self, key: str, schema: dict[str, Any]) -> None:
        self._memo[key] = schema
        self._memo.move_to_end(key)
        if len(self._memo) > MEMO_SIZE:
            self._memo.popitem(last=False)


_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{1,30}$")


def _parse(text: str) -> tuple[list[dict[str, Any]], str | None]:
    """The fields of a generation, checked against ``fields_schema`` by hand (a backend may
    ignore the constraint)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return [], "invalid_json"
    fields = value.get("fields") if isinstance(value, dict) else None
    if not isinstance(fields, list) or not 1 <= len(fields) <= MAX_FOUND:
        return [], "fields_schema"
    for item in fields:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("name"), str)
            and _FIELD_NAME.match(item["name"])
            and item.get("type") in FIELD_TYPES
        ):
            return [], "fields_schema"
    return fields, None


def _name(definition: Any) -> str | None:
    function = definition.get("function") if isinstance(definition, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else None
