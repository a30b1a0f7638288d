"""Toolsets: validated OpenAI tool definitions with their output schemas.

A toolset is content-addressed: its id is a digest of its canonical JSON, so the same tools
always get the same id, in every process. Validation happens once, when a toolset is built;
the compiled argument validators are kept on the ``Tool`` objects for the hot path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from toolsim import schemas
from toolsim.errors import InvalidArgumentsError, InvalidToolDefinitionError
from toolsim.jsonutil import canonical, digest

TOOL_MODES = ("simulated", "live", "record")
"""How the ToolActor answers a tool: the LLM; the real tool; the real tool, stored in the cache
so later simulated runs replay it."""
NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_TOOLS = 128
MAX_DESCRIPTION_CHARS = 4096

DEFAULT_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "result": {"type": "string", "minLength": 1, "maxLength": 600},
    },
    "required": ["result"],
    "additionalProperties": False,
}
"""Output schema of a tool without one whose schema was not inferred (inference off, or it
failed): ``{"result": "<text>"}``. No description: a small model copies prose it is shown."""

TOOL_NAME_SCHEMA: dict[str, Any] = {"type": "string", "pattern": NAME_RE.pattern}
JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A JSON Schema (2020-12; local $refs only, RE2 patterns, at most 64 kB)",
}
TOOL_DEFINITION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An OpenAI tool definition; names are unique within a toolset",
    "properties": {
        "type": {"const": "function"},
        "function": {
            "type": "object",
            "properties": {
                "name": TOOL_NAME_SCHEMA,
                "description": {"type": "string", "maxLength": MAX_DESCRIPTION_CHARS},
                "parameters": {
                    **JSON_SCHEMA,
                    "description": 'The arguments\' JSON Schema, of "type": "object"',
                    "properties": {
                        "type": {"const": "object"},
                        "properties": {"type": "object", "additionalProperties": JSON_SCHEMA},
                        "required": {
                            "type": "array",
                            "items": {"type": "string"},
                            "uniqueItems": True,
                        },
                    },
                    "required": ["type"],
                },
                "strict": {"type": "boolean"},
            },
            "required": ["name"],
        },
    },
    "required": ["type", "function"],
}
"""What ``build_toolset`` accepts as one tool, for the services' OpenAPI documents."""


def fits_json(value: Any) -> Any:
    """``value`` if it encodes as JSON here: a body parser may keep integers past 64 bits,
    which orjson (ids, digests, the registry) refuses. A pydantic ``AfterValidator``."""
    try:
        canonical(value)
    except TypeError as exc:
        raise ValueError(f"integers must fit in 64 bits ({exc})") from exc
    return value


def tool_map_schema(values: dict[str, Any], what: str) -> dict[str, Any]:
    """The schema of a ``{tool name: value}`` field (``output_schemas``, ``stateful``, ...)."""
    return {
        "type": "object",
        "description": f"{what}, by tool name (each a tool of the toolset)",
        "propertyNames": TOOL_NAME_SCHEMA,
        "additionalProperties": values,
    }


@dataclass(frozen=True)
class Tool:
    """One tool: its OpenAI definition, output schema and compiled argument validator."""

    name: str
    definition: dict[str, Any]
    output_schema: dict[str, Any]
    stateful: bool
    mode: str
    """One of ``TOOL_MODES``."""
    endpoint: str | None
    """Real HTTP endpoint for ``live``/``record`` (None: a built-in utility tool)."""
    retrieval: bool | None
    """Whether the tool returns evidence (a search): in a grounded episode its observations
    must carry the facts. None: the ToolActor decides from the name and parameters."""
    digest: str
    """Digest of definition + output schema + statefulness: part of every cache key."""
    validator: Draft202012Validator = field(repr=False, compare=False)
    output_validator: Draft202012Validator = field(repr=False, compare=False)

    @property
    def description(self) -> str:
        return str(self.definition["function"].get("description") or "")

    @property
    def parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = self.definition["function"].get("parameters") or {
            "type": "object",
            "properties": {},
        }
        return params

    def parse_arguments(self, arguments: str, *, param_prefix: str = "") -> dict[str, Any]:
        """Parse the JSON-encoded arguments of a tool call and validate them.

        Raises ``InvalidArgumentsError`` whose ``param`` names the offending field.
        """
        try:
            value = orjson.loads(arguments) if arguments.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise InvalidArgumentsError(
                f"arguments of tool {self.name!r} are not valid JSON: {exc}",
                param=param_prefix.rstrip(".") or None,
            ) from exc
        return self.check_arguments(value, param_prefix=param_prefix)

    def check_arguments(self, value: Any, *, param_prefix: str = "") -> dict[str, Any]:
        if not isinstance(value, dict):
            raise InvalidArgumentsError(
                f"arguments of tool {self.name!r} must be a JSON object",
                param=param_prefix.rstrip(".") or None,
            )
        error = _first_error(self.validator, value)
        if error is not None:
            raise InvalidArgumentsError(
                f"invalid arguments for tool {self.name!r}: {error.message}",
                param=param_prefix + _field_path(error),
            )
        return value


@dataclass(frozen=True)
class Toolset:
    id: str
    tools: dict[str, Tool]
    faults: dict[str, Any] | None = None
    """The toolset's fault-injection policy, as given (the ToolActor validates it)."""
    inferred: tuple[str, ...] = ()
    """Tools whose output schema was inferred (``toolsim.schema_inference``), not given."""

    def definitions(self) -> list[dict[str, Any]]:
        return [tool.definition for tool in self.tools.values()]

    def output_schemas(self) -> dict[str, dict[str, Any]]:
        return {name: tool.output_schema for name, tool in self.tools.items()}

    def stateful(self) -> dict[str, bool]:
        return {name: tool.stateful for name, tool in self.tools.items()}

    def modes(self) -> dict[str, str]:
        """Tools that are not simulated, with their mode."""
        return {n: t.mode for n, t in self.tools.items() if t.mode != "simulated"}

    def live_endpoints(self) -> dict[str, str]:
        return {n: t.endpoint for n, t in self.tools.items() if t.endpoint is not None}

    def retrieval(self) -> dict[str, bool]:
        """Tools the toolset marks as retrieval-like (True) or not (False)."""
        return {n: t.retrieval for n, t in self.tools.items() if t.retrieval is not None}

    def to_record(self) -> dict[str, Any]:
        """The JSON form stored in the registry (enough to rebuild the toolset)."""
        return {
            "id": self.id,
            "tools": self.definitions(),
            "output_schemas": self.output_schemas(),
            "stateful": self.stateful(),
            **({"modes": self.modes()} if self.modes() else {}),
            **({"live_endpoints": self.live_endpoints()} if self.live_endpoints() else {}),
            **({"retrieval": self.retrieval()} if self.retrieval() else {}),
            **({"faults": self.faults} if self.faults is not None else {}),
            **({"inferred_output_schemas": list(self.inferred)} if self.inferred else {}),
        }


def toolset_id(
    tools: list[dict[str, Any]],
    output_schemas: Mapping[str, Any],
    stateful: Mapping[str, bool],
    execution: Mapping[str, Any] | None = None,
    extras: Mapping[str, Any] | None = None,
) -> str:
    content: dict[str, Any] = {
        "tools": tools,
        "output_schemas": output_schemas,
        "stateful": stateful,
    }
    if execution:  # only when some tool is not simulated: plain toolsets keep their ids
        content["execution"] = execution
    for key, value in (extras or {}).items():  # likewise: only what is set counts
        if value:
            content[key] = value
    return "ts_" + digest(content)[:24]


def build_toolset(
    tools: list[dict[str, Any]],
    output_schemas: Mapping[str, Any] | None = None,
    stateful: Mapping[str, bool] | None = None,
    modes: Mapping[str, str] | None = None,
    live_endpoints: Mapping[str, str] | None = None,
    retrieval: Mapping[str, bool] | None = None,
    faults: Mapping[str, Any] | None = None,
    inferred: Sequence[str] = (),
) -> Toolset:
    """Validate raw definitions into a ``Toolset``; raises ``InvalidToolDefinitionError``.

    ``retrieval`` marks tools whose grounded observations must carry evidence; ``faults`` is
    a fault-injection policy kept as given (its meaning is the ToolActor's); ``inferred``
    names the tools whose schema in ``output_schemas`` was inferred (part of the id)."""
    output_schemas = dict(output_schemas or {})
    stateful = dict(stateful or {})
    retrieval = dict(retrieval or {})
    execution = {"modes": dict(modes or {}), "live_endpoints": dict(live_endpoints or {})}
    if faults is not None and not isinstance(faults, Mapping):
        raise InvalidToolDefinitionError("faults must be a JSON object", param="faults")
    if not tools:
        raise InvalidToolDefinitionError("a toolset needs at least one tool", param="tools")
    if len(tools) > MAX_TOOLS:
        raise InvalidToolDefinitionError(f"at most {MAX_TOOLS} tools", param="tools")
    built: dict[str, Tool] = {}
    for i, definition in enumerate(tools):
        tool = _build_tool(i, definition, output_schemas, stateful, execution, retrieval)
        if tool.name in built:
            raise InvalidToolDefinitionError(
                f"duplicate tool name {tool.name!r}", param=f"tools[{i}].function.name"
            )
        built[tool.name] = tool
    mappings = (
        (output_schemas, "output_schemas"),
        (stateful, "stateful"),
        (retrieval, "retrieval"),
        (execution["modes"], "modes"),
        (execution["live_endpoints"], "live_endpoints"),
    )
    marked_inferred = sorted(set(inferred))
    unmarked = sorted(n for n in marked_inferred if n not in output_schemas)
    if unmarked:
        raise InvalidToolDefinitionError(
            f"inferred_output_schemas names tools without an output schema: {unmarked}",
            param="inferred_output_schemas",
        )
    for mapping, label in mappings:
        unknown = sorted(set(mapping) - set(built))
        if unknown:
            raise InvalidToolDefinitionError(
                f"{label} names tools that are not in the toolset: {unknown}",
                param=f"{label}.{unknown[0]}",
            )
    # The id covers the normalized content, so defaults count and spelling does not.
    record_stateful = {n: t.stateful for n, t in built.items()}
    record_schemas = {n: t.output_schema for n, t in built.items()}
    used = {
        "modes": {n: t.mode for n, t in built.items() if t.mode != "simulated"},
        "live_endpoints": {n: t.endpoint for n, t in built.items() if t.endpoint is not None},
    }
    marks = {n: t.retrieval for n, t in built.items() if t.retrieval is not None}
    policy = dict(faults) if faults is not None else None
    tid = toolset_id(
        [t.definition for t in built.values()],
        record_schemas,
        record_stateful,
        used if any(used.values()) else None,
        {"retrieval": marks, "faults": policy, "inferred": marked_inferred},
    )
    return Toolset(id=tid, tools=built, faults=policy, inferred=tuple(marked_inferred))


def toolset_from_record(record: Mapping[str, Any]) -> Toolset:
    return build_toolset(
        record["tools"],
        record.get("output_schemas"),
        record.get("stateful"),
        record.get("modes"),
        record.get("live_endpoints"),
        record.get("retrieval"),
        record.get("faults"),
        record.get("inferred_output_schemas") or (),
    )


def _build_tool(
    i: int,
    definition: Any,
    output_schemas: Mapping[str, Any],
    stateful: Mapping[str, bool],
    execution: Mapping[str, Mapping[str, str]],
    retrieval: Mapping[str, bool],
) -> Tool:
    where = f"tools[{i}]"
    if not isinstance(definition, dict) or definition.get("type") != "function":
        raise InvalidToolDefinitionError(
            'each tool must be {"type": "function", "function": {...}}', param=f"{where}.type"
        )
    function = definition.get("function")
    if not isinstance(function, dict):
        raise InvalidToolDefinitionError("missing 'function' object", param=f"{where}.function")
    name = function.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidToolDefinitionError(
            f"tool name {name!r} must match {NAME_RE.pattern}", param=f"{where}.function.name"
        )
    description = function.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS:
        raise InvalidToolDefinitionError(
            f"description must be a string of at most {MAX_DESCRIPTION_CHARS} characters",
            param=f"{where}.function.description",
        )
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    _check_schema(parameters, f"{where}.function.parameters", require_object=True)
    output_schema = output_schemas.get(name, DEFAULT_OUTPUT_SCHEMA)
    _check_schema(output_schema, f"output_schemas.{name}", require_object=False)
    is_stateful = stateful.get(name, False)
    if not isinstance(is_stateful, bool):
        raise InvalidToolDefinitionError("stateful flags are booleans", param=f"stateful.{name}")
    mode, endpoint = _execution(name, execution)
    marked = retrieval.get(name)
    if marked is not None and not isinstance(marked, bool):
        raise InvalidToolDefinitionError("retrieval flags are booleans", param=f"retrieval.{name}")
    clean = {"type": "function", "function": {**function, "parameters": parameters}}
    return Tool(
        name=name,
        definition=clean,
        output_schema=output_schema,
        stateful=is_stateful,
        mode=mode,
        endpoint=endpoint,
        retrieval=marked,
        digest=digest({"d": clean, "o": output_schema, "s": is_stateful}),
        validator=schemas.validator(parameters),
        output_validator=schemas.validator(output_schema),
    )


def _execution(name: str, execution: Mapping[str, Mapping[str, str]]) -> tuple[str, str | None]:
    mode = execution["modes"].get(name, "simulated")
    if mode not in TOOL_MODES:
        raise InvalidToolDefinitionError(
            f"mode {mode!r} is not one of {list(TOOL_MODES)}", param=f"modes.{name}"
        )
    endpoint = execution["live_endpoints"].get(name)
    if endpoint is not None and not (
        isinstance(endpoint, str) and endpoint.startswith(("http://", "https://"))
    ):
        raise InvalidToolDefinitionError(
            "a live endpoint is an http(s) URL", param=f"live_endpoints.{name}"
        )
    return mode, endpoint


def _check_schema(schema: Any, param: str, *, require_object: bool) -> None:
    if not isinstance(schema, dict):
        raise InvalidToolDefinitionError("a JSON Schema must be an object", param=param)
    schemas.check_untrusted(schema, param)  # nothing fetched, RE2 patterns, bounded size
    if require_object and schema.get("type") != "object":
        raise InvalidToolDefinitionError(
            'function parameters must be a JSON Schema of "type": "object"', param=param
        )


def _first_error(validator: Draft202012Validator, value: Any) -> ValidationError | None:
    try:
        return next(iter(validator.iter_errors(value)), None)
    except RecursionError as exc:  # a recursive schema and arguments nested past the stack
        raise InvalidArgumentsError("arguments are nested too deeply to validate") from exc


def _field_path(error: ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        required = error.validator_value if isinstance(error.validator_value, list) else []
        missing = next((r for r in required if r not in error.instance), None)
        if missing is not None:
            return f"{path}.{missing}" if path else str(missing)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        schema = error.schema if isinstance(error.schema, dict) else {}
        allowed = set(schema.get("properties", {}))
        extra = next((k for k in error.instance if k not in allowed), None)
        if extra is not None:
            return f"{path}.{extra}" if path else str(extra)
    return path
