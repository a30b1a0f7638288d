"""Import an OpenAPI 3.0/3.1 document as toolsim tools, so an existing REST API can be simulated.

Each operation (path x method) becomes one OpenAI function tool in strict form, plus the JSON
Schema of its success response as the tool's output schema. The module is pure: it reads a dict,
fetches nothing, and raises ``InvalidToolDefinitionError`` for anything it cannot import.

Local ``$ref``s are inlined because a tool definition must stand alone; external ones are refused
before validation, so importing never touches the network.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from jsonschema.exceptions import ValidationError, best_match
from openapi_spec_validator import validate
from openapi_spec_validator.exceptions import OpenAPIError
from openapi_spec_validator.validation.exceptions import ValidatorDetectError
from referencing.exceptions import Unresolvable

from toolsim import schemas
from toolsim.errors import InvalidToolDefinitionError
from toolsim.jsonutil import canonical

# openapi-spec-validator picks its schema backend at each call from this variable: jsonschema-rs
# when that is installed (schemathesis, a dev dependency, brings it), else jsonschema. This
# module reads jsonschema's errors (``best_match``, the failing path as ``param``), and its
# messages must not depend on what else is installed, so it is always jsonschema.
os.environ["OPENAPI_SPEC_VALIDATOR_SCHEMA_VALIDATOR_BACKEND"] = "jsonschema"

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
MAX_DESCRIPTION_CHARS = 1024
MAX_NAME_CHARS = 64

STATUS_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"status": {"type": "integer"}},
    "required": ["status"],
    "additionalProperties": False,
}
"""Output schema of an operation whose success response has no JSON body."""

_MAX_RECURSION = 1
"""How many times a schema may be expanded inside itself before it becomes ``{}``."""
MAX_REF_EXPANSIONS = 512
"""Refs inlined into one schema at most: mutually recursive schemas multiply exponentially."""
MAX_EXPANDED_BYTES = 256_000
"""Bytes one schema may grow to as its refs are inlined (a few big refs blow up as surely as
many small ones; a stored tool schema is at most 64 kB anyway)."""
MAX_DOCUMENT_EXPANDED_BYTES = 16_000_000
"""Bytes the whole import may inline: 128 tools with two 64 kB schemas each, at most."""
_MAX_REF_HOPS = 32

# OpenAPI additions to JSON Schema that 2020-12 validators do not need; and identifiers that
# mean nothing once refs are inlined (a stored tool schema may not carry ``$id``).
_DROPPED = frozenset({"example", "discriminator", "xml", "externalDocs", "$id", "$schema"})
# Keys whose values are data, not schemas or OpenAPI objects: never scanned for $ref.
_DATA_KEYS = frozenset({"example", "enum", "const"})
_SUBSCHEMA = frozenset(
    {
        "items",
        "additionalItems",
        "additionalProperties",
        "not",
        "contains",
        "propertyNames",
        "if",
        "then",
        "else",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
_SUBSCHEMA_LIST = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SUBSCHEMA_MAP = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)


@dataclass(frozen=True)
class ImportedTool:
    """One operation as a toolsim tool, with where it came from in the API."""

    definition: dict[str, Any]
    """OpenAI function tool: ``{"type": "function", "function": {...}}``."""
    output_schema: dict[str, Any]
    method: str
    path: str


@dataclass(frozen=True)
class _Operation:
    path: str
    method: str
    item: dict[str, Any]
    operation: dict[str, Any]

    @property
    def where(self) -> str:
        return f"paths.{self.path}.{self.method}"


def import_openapi(document: dict[str, Any], *, max_tools: int = 128) -> list[ImportedTool]:
    """Turn every operation of an OpenAPI document into a tool; raises on anything unusable."""
    _validate(document)
    resolver = _Resolver(document)
    operations = list(_operations(document, resolver))
    if not operations:
        raise InvalidToolDefinitionError("the document has no operations to import", param="paths")
    if len(operations) > max_tools:
        raise InvalidToolDefinitionError(
            f"the document has {len(operations)} operations, more than {max_tools} tools",
            param="paths",
        )
    tools = [_tool(op, resolver) for op in operations]
    _check_unique_names(tools)
    return tools


# --- validation ---------------------------------------------------------------------------------


def _validate(document: Any) -> None:
    """Refuse before validating what the validator would fetch or report vaguely."""
    if not isinstance(document, dict):
        raise InvalidToolDefinitionError("an OpenAPI document must be a JSON object")
    if not document.get("paths"):
        raise InvalidToolDefinitionError("the document has no paths to import", param="paths")
    _check_refs(document)
    version = document.get("openapi", document.get("swagger"))
    try:
        validate(document)
    except ValidatorDetectError as exc:
        raise InvalidToolDefinitionError(
            f"unsupported OpenAPI version {version!r}: only 3.0.x and 3.1.x can be imported",
            param="openapi",
        ) from exc
    except ValidationError as exc:
        raise InvalidToolDefinitionError(
            f"invalid OpenAPI document: {_reason(exc)}", param=_error_param(exc)
        ) from exc
    except (OpenAPIError, Unresolvable) as exc:
        raise InvalidToolDefinitionError(f"invalid OpenAPI document: {exc}") from exc


def _check_refs(document: dict[str, Any]) -> None:
    """External refs would make the validator fetch files or URLs; dangling ones, fail obscurely."""
    resolver = _Resolver(document)
    for where, ref in _refs(document, ""):
        if not ref.startswith("#"):
            raise InvalidToolDefinitionError(
                f"external $ref {ref!r} is not supported: inline it into the document",
                param=where,
            )
        resolver.lookup(ref, where)


def _refs(node: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}" if where else str(key)
            if key == "$ref" and isinstance(value, str):
                yield here, value
            elif key not in _DATA_KEYS and not str(key).startswith("x-"):
                yield from _refs(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _refs(value, f"{where}.{i}")


def _reason(exc: ValidationError) -> str:
    """The validator's own message, plus the most specific cause when it only says 'anyOf'."""
    message = _short(exc.message)
    cause = best_match(exc.context) if exc.context else None
    return f"{message} ({_short(cause.message)})" if cause is not None else message


def _error_param(exc: ValidationError) -> str | None:
    path = [str(p) for p in exc.absolute_path]
    required = exc.validator_value if exc.validator == "required" else None
    if isinstance(required, list) and isinstance(exc.instance, dict):
        path += [str(r) for r in required if r not in exc.instance][:1]
    return ".".join(path) or None


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- $ref resolution ----------------------------------------------------------------------------


class _Resolver:
    """Inlines local refs and rewrites OpenAPI schemas into plain JSON Schema 2020-12.

    Recursive schemas cannot be inlined whole: a ref that is already being expanded is expanded
    once more (depth 1) and, past that, replaced by ``{}`` (any value), so a tree of ``Node``s
    becomes ``Node{children: [Node{children: [{}]}]}``. Mutually recursive schemas still grow
    exponentially under that rule, so one schema may inline at most ``MAX_REF_EXPANSIONS`` refs;
    past that the import is refused rather than silently truncated.
    """

    def __init__(self, document: dict[str, Any]) -> None:
        self._document = document
        self._expansions = 0
        self._bytes = 0
        self._document_bytes = 0
        self._sizes: dict[str, int] = {}

    def lookup(self, ref: str, where: str) -> Any:
        node: Any = self._document
        for token in ref[1:].split("/")[1:] if ref != "#" else []:
            key = unquote(token).replace("~1", "/").replace("~0", "~")
            if isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            elif isinstance(node, dict) and key in node:
                node = node[key]
            else:
                raise InvalidToolDefinitionError(
                    f"$ref {ref!r} points to nothing in the document", param=where
                )
        return node

    def deref(self, node: Any, where: str) -> Any:
        """Follow a chain of refs to a non-schema object (parameter, response, request body)."""
        for _ in range(_MAX_REF_HOPS):
            if not (isinstance(node, dict) and isinstance(node.get("$ref"), str)):
                return node
            node = self.lookup(node["$ref"], where)
        raise InvalidToolDefinitionError("circular $ref chain", param=where)

    def schema(self, node: Any, where: str) -> Any:
        self._expansions = 0
        self._bytes = len(canonical(node))
        return self._schema(node, where, ())

    def _schema(self, node: Any, where: str, stack: tuple[str, ...]) -> Any:
        if not isinstance(node, dict):
            return node  # boolean schemas
        ref = node.get("$ref")
        if not isinstance(ref, str):
            return self._convert(node, where, stack)
        if stack.count(ref) > _MAX_RECURSION:
            return {}
        self._expansions += 1
        if self._expansions > MAX_REF_EXPANSIONS:
            raise InvalidToolDefinitionError(
                f"schema expands to more than {MAX_REF_EXPANSIONS} inlined $refs: simplify it",
                param=where,
            )
        raw = self.lookup(ref, where)
        self._count_bytes(ref, raw, where)
        target = self._schema(raw, where, (*stack, ref))
        siblings = self._convert({k: v for k, v in node.items() if k != "$ref"}, where, stack)
        if not siblings:
            return target
        # 3.1 allows keywords beside $ref (a description, mostly); they refine the target.
        return (
            {**target, **siblings} if isinstance(target, dict) else {"allOf": [target], **siblings}
        )

    def _count_bytes(self, ref: str, raw: Any, where: str) -> None:
        """Each inlined ref adds its target's size: refuse before the copy, not after."""
        size = self._sizes.get(ref)
        if size is None:
            size = self._sizes[ref] = len(canonical(raw))
        self._bytes += size
        self._document_bytes += size
        if self._bytes > MAX_EXPANDED_BYTES:
            raise InvalidToolDefinitionError(
                f"schema expands to more than {MAX_EXPANDED_BYTES // 1000} kB as its $refs are "
                "inlined: simplify it",
                param=where,
            )
        if self._document_bytes > MAX_DOCUMENT_EXPANDED_BYTES:
            raise InvalidToolDefinitionError(
                f"the document expands to more than {MAX_DOCUMENT_EXPANDED_BYTES // 1_000_000} MB "
                "as its $refs are inlined: import fewer operations at a time",
                param=where,
            )

    def _convert(self, node: dict[str, Any], where: str, stack: tuple[str, ...]) -> Any:
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DROPPED or key.startswith("x-"):
                continue
            if key in _SUBSCHEMA:
                out[key] = self._schema(value, where, stack)
            elif key in _SUBSCHEMA_LIST and isinstance(value, list):
                out[key] = [self._schema(v, where, stack) for v in value]
            elif key in _SUBSCHEMA_MAP and isinstance(value, dict):
                out[key] = {k: self._schema(v, where, stack) for k, v in value.items()}
            else:
                out[key] = copy.deepcopy(value)
        _fix_exclusive_bounds(out)
        return nullable(out) if out.pop("nullable", False) is True else out


def _fix_exclusive_bounds(schema: dict[str, Any]) -> None:
    """3.0's boolean ``exclusiveMinimum`` flags the bound; 2020-12 wants the bound itself."""
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        flag = schema.get(exclusive)
        if isinstance(flag, bool):
            del schema[exclusive]
            if flag and bound in schema:
                schema[exclusive] = schema.pop(bound)


def nullable(schema: Any) -> Any:
    """Let ``schema`` also accept null; an enum or const must be wrapped or null would fail it."""
    if not isinstance(schema, dict):
        return {"anyOf": [schema, {"type": "null"}]}
    kind = schema.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return schema
    if isinstance(kind, str) and "enum" not in schema and "const" not in schema:
        return {**schema, "type": [kind, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


# --- operations ---------------------------------------------------------------------------------


def _operations(document: dict[str, Any], resolver: _Resolver) -> Iterator[_Operation]:
    for path, raw_item in document["paths"].items():
        item = resolver.deref(raw_item, f"paths.{path}")
        if not isinstance(item, dict):
            continue
        for method in METHODS:
            operation = item.get(method)
            if isinstance(operation, dict):
                yield _Operation(str(path), method, item, operation)


def _tool(op: _Operation, resolver: _Resolver) -> ImportedTool:
    parameters = _parameters(op, resolver)
    output = _output_schema(op, resolver)
    _check_schema(parameters, f"{op.where}.parameters")
    _check_schema(output, f"{op.where}.responses")
    function = {
        "name": tool_name(op.operation.get("operationId"), op.method, op.path),
        "description": _description(op),
        "parameters": parameters,
        "strict": True,
    }
    return ImportedTool(
        definition={"type": "function", "function": function},
        output_schema=output,
        method=op.method,
        path=op.path,
    )


def tool_name(operation_id: Any, method: str, path: str) -> str:
    """The operationId made legal for OpenAI, else ``{method}_{path}`` (``get_pets_petId``)."""
    if isinstance(operation_id, str):
        name = re.sub(r"[^a-zA-Z0-9_-]", "_", operation_id)[:MAX_NAME_CHARS]
        if name:
            return name
    name = re.sub(r"[^a-zA-Z0-9_-]+", "_", f"{method}_{path}")
    return re.sub(r"_+", "_", name).strip("_")[:MAX_NAME_CHARS]


def _description(op: _Operation) -> str:
    parts = [op.operation.get("summary"), op.operation.get("description")]
    texts = [p.strip() for p in parts if isinstance(p, str) and p.strip()]
    if len(texts) == 2 and texts[0] == texts[1]:
        texts = texts[:1]
    text = "\n\n".join(texts) or f"{op.method.upper()} {op.path}"
    return text[:MAX_DESCRIPTION_CHARS]


def _check_unique_names(tools: list[ImportedTool]) -> None:
    seen: dict[str, ImportedTool] = {}
    for tool in tools:
        name = tool.definition["function"]["name"]
        if name in seen:
            first = seen[name]
            raise InvalidToolDefinitionError(
                f"operations {first.method.upper()} {first.path} and "
                f"{tool.method.upper()} {tool.path} both become tool {name!r}",
                param=f"paths.{tool.path}.{tool.method}.operationId",
            )
        seen[name] = tool


def _check_schema(schema: dict[str, Any], where: str) -> None:
    schemas.check_untrusted(schema, where)  # what the toolset will hold: checked as such


# --- parameters ---------------------------------------------------------------------------------


class _Fields:
    """Properties of a strict parameters object; optional ones turn nullable."""

    def __init__(self) -> None:
        self.properties: dict[str, Any] = {}

    def add(self, name: str, schema: Any, *, required: bool, prefix: str) -> None:
        while name in self.properties:  # two sources name the same field: keep both
            name = prefix + name
        self.properties[name] = schema if required else nullable(schema)

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": self.properties,
            "required": list(self.properties),
            "additionalProperties": False,
        }


def _parameters(op: _Operation, resolver: _Resolver) -> dict[str, Any]:
    fields = _Fields()
    for param, where in _merged_parameters(op, resolver):
        schema = resolver.schema(_parameter_schema(param), where)
        description = param.get("description")
        if isinstance(description, str) and description and isinstance(schema, dict):
            schema = {**schema, "description": description}
        required = param.get("in") == "path" or param.get("required") is True
        fields.add(str(param["name"]), schema, required=required, prefix=f"{param.get('in')}_")
    _add_body(op, resolver, fields)
    return fields.schema()


def _merged_parameters(op: _Operation, resolver: _Resolver) -> list[tuple[dict[str, Any], str]]:
    """Path-level parameters, overridden by operation-level ones with the same (name, in)."""
    merged: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
    sources = ((op.item, f"paths.{op.path}.parameters"), (op.operation, f"{op.where}.parameters"))
    for owner, where in sources:
        for i, raw in enumerate(owner.get("parameters") or []):
            param = resolver.deref(raw, f"{where}.{i}")
            merged[(str(param["name"]), str(param["in"]))] = (param, f"{where}.{i}")
    return list(merged.values())


def _parameter_schema(param: dict[str, Any]) -> Any:
    if "schema" in param:
        return param["schema"]
    for media in (param.get("content") or {}).values():
        if isinstance(media, dict) and "schema" in media:
            return media["schema"]
    return {}


def _add_body(op: _Operation, resolver: _Resolver, fields: _Fields) -> None:
    """An object body is flattened into the arguments; any other body goes under ``body``."""
    where = f"{op.where}.requestBody"
    body = resolver.deref(op.operation.get("requestBody"), where)
    if not isinstance(body, dict):
        return
    found = _json_media(body.get("content") or {})
    if found is None:
        return
    media_type, media = found
    schema = resolver.schema(media.get("schema", {}), f"{where}.content.{media_type}.schema")
    body_required = body.get("required") is True
    if not _is_plain_object(schema):
        fields.add("body", schema, required=body_required, prefix="body_")
        return
    required = set(schema.get("required") or [])
    for name, prop in schema["properties"].items():
        if isinstance(prop, dict) and prop.get("readOnly") is True:
            continue  # the server sets it; a client never sends it
        fields.add(name, prop, required=body_required and name in required, prefix="body_")


def _is_plain_object(schema: Any) -> bool:
    """Only a bare object can be flattened without losing constraints on the whole body."""
    return (
        isinstance(schema, dict)
        and schema.get("type", "object") == "object"
        and isinstance(schema.get("properties"), dict)
        and not any(k in schema for k in ("allOf", "anyOf", "oneOf", "not"))
    )


def _json_media(content: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The JSON media type of a content map: ``application/json`` first, then any ``+json``."""
    matches = []
    for media_type, media in content.items():
        base = str(media_type).split(";")[0].strip().lower()
        if isinstance(media, dict) and (base == "application/json" or base.endswith("+json")):
            matches.append((base != "application/json", str(media_type), media))
    if not matches:
        return None
    _, media_type, media = min(matches, key=lambda m: m[0])
    return media_type, media


# --- output -------------------------------------------------------------------------------------


def _output_schema(op: _Operation, resolver: _Resolver) -> dict[str, Any]:
    responses = op.operation.get("responses") or {}
    for code in _success_codes(responses):
        where = f"{op.where}.responses.{code}"
        response = resolver.deref(responses[code], where)
        found = _json_media(response.get("content") or {}) if isinstance(response, dict) else None
        if found is not None:
            media_type, media = found
            schema = resolver.schema(media.get("schema", {}), f"{where}.content.{media_type}")
            return _as_object(schema)
    return copy.deepcopy(STATUS_OUTPUT_SCHEMA)


def _success_codes(responses: dict[Any, Any]) -> list[Any]:
    """200, 201, ... in order, then 2XX; ``default`` only when no 2xx response is declared."""
    exact = sorted((k for k in responses if re.fullmatch(r"2\d\d", str(k))), key=str)
    ranges = [k for k in responses if str(k).upper() == "2XX"]
    if exact or ranges:
        return exact + ranges
    return ["default"] if "default" in responses else []


def _as_object(schema: Any) -> dict[str, Any]:
    if isinstance(schema, dict) and schema.get("type") == "object":
        return schema
    return {
        "type": "object",
        "properties": {"result": schema},
        "required": ["result"],
        "additionalProperties": False,
    }
