"""Validation checking: what a generated (or ``strict``) tool must satisfy to be stored.

On top of what ``toolsim.toolsets.build_toolset`` checks for every tool (names, uniqueness,
JSON Schema meta-validation, sizes), the OpenAI strict subset: every object schema closes
with ``additionalProperties: false`` and lists every property in ``required`` (optional ones
are nullable instead), nesting is at most ``MAX_DEPTH`` deep and ``MAX_PROPERTIES`` wide,
and descriptions are not empty.
"""

from __future__ import annotations

from typing import Any

from toolsim.errors import InvalidToolDefinitionError

MAX_DEPTH = 5
MAX_PROPERTIES = 100
UNSUPPORTED = ("allOf", "oneOf", "not", "if", "then", "else", "patternProperties")


def check_strict_tool(
    definition: dict[str, Any], output_schema: dict[str, Any], where: str
) -> None:
    """Raise ``InvalidToolDefinitionError`` unless the tool is in OpenAI strict form."""
    function = definition.get("function", {})
    if not str(function.get("description") or "").strip():
        raise InvalidToolDefinitionError(
            "a tool needs a non-empty description", param=f"{where}.function.description"
        )
    check_strict_schema(function.get("parameters", {}), f"{where}.function.parameters")
    name = function.get("name", "?")
    check_strict_schema(output_schema, f"output_schemas.{name}")


def check_strict_schema(schema: Any, param: str, depth: int = 0) -> int:
    """Check one schema recursively; returns the number of properties seen."""
    if not isinstance(schema, dict):
        raise InvalidToolDefinitionError("a schema must be an object", param=param)
    if depth > MAX_DEPTH:
        raise InvalidToolDefinitionError(f"schemas nest deeper than {MAX_DEPTH}", param=param)
    bad = [k for k in UNSUPPORTED if k in schema]
    if bad:
        raise InvalidToolDefinitionError(f"strict schemas do not support {bad}", param=param)
    count = 0
    types = schema.get("type")
    if types == "object" or (isinstance(types, list) and "object" in types):
        count += _check_object(schema, param, depth)
    if "items" in schema:
        count += check_strict_schema(schema["items"], f"{param}.items", depth + 1)
    for i, sub in enumerate(schema.get("anyOf", [])):
        count += check_strict_schema(sub, f"{param}.anyOf[{i}]", depth + 1)
    if count > MAX_PROPERTIES:
        raise InvalidToolDefinitionError(f"more than {MAX_PROPERTIES} properties", param=param)
    return count


def _check_object(schema: dict[str, Any], param: str, depth: int) -> int:
    properties = schema.get("properties", {})
    if schema.get("additionalProperties") is not False:
        raise InvalidToolDefinitionError(
            'strict object schemas need "additionalProperties": false', param=param
        )
    missing = sorted(set(properties) - set(schema.get("required", [])))
    if missing:
        raise InvalidToolDefinitionError(
            f"strict schemas list every property in 'required' (make optional ones nullable); "
            f"missing: {missing}",
            param=f"{param}.required",
        )
    count = len(properties)
    for name, sub in properties.items():
        count += check_strict_schema(sub, f"{param}.properties.{name}", depth + 1)
    return count
