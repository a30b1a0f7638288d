"""JSON Schemas written by callers, made safe to accept and to run.

Tool ``parameters``, output schemas and imported OpenAPI documents come from whoever calls the
API, so three things a schema can ask for are refused or disarmed here, in one place:

- fetching: ``jsonschema``'s default registry retrieves unknown ``$ref`` URIs with ``urlopen``
  (synchronously, no timeout: server-side request forgery and a stalled event loop). Every
  validator built by ``validator()`` holds a registry that retrieves nothing, and
  ``check_untrusted()`` refuses non-local ``$ref``/``$dynamicRef``, ``$id`` and unknown
  ``$schema`` dialects before a schema is accepted.
- backtracking: Python's ``re`` takes exponential time on ``^(a+)+$`` against ``"aaa…!"``,
  and a validation runs on the event loop. ``pattern``, ``patternProperties`` and
  ``additionalProperties`` run on RE2 (linear time) instead; a pattern RE2 cannot compile
  (backreferences, lookaround) is refused when the tool is defined.
- size: a schema is bounded in bytes and nesting depth, and a ``$ref`` cycle that never
  consumes the instance (it would recurse until ``RecursionError``) is refused.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import re2
from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.exceptions import SchemaError
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from toolsim.errors import InvalidToolDefinitionError
from toolsim.jsonutil import canonical

MAX_SCHEMA_BYTES = 64_000
"""Largest accepted schema, as canonical JSON."""
MAX_SCHEMA_DEPTH = 64
"""Deepest accepted nesting of JSON objects and arrays in one schema."""
KNOWN_DIALECTS = frozenset(
    prefix + suffix
    for prefix in (
        "https://json-schema.org/draft/2020-12/schema",
        "https://json-schema.org/draft/2019-09/schema",
        "http://json-schema.org/draft-07/schema",
        "http://json-schema.org/draft-06/schema",
        "http://json-schema.org/draft-04/schema",
    )
    for suffix in ("", "#")
)
"""``$schema`` values accepted (and ignored: every schema is validated as 2020-12)."""

NO_RETRIEVAL: Registry[Any] = Registry()
"""A registry whose ``retrieve`` fails: a ``$ref`` outside the schema resolves to an error."""

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is the caller's error, not a log line
_RE2_OPTIONS.never_capture = True  # validation only asks whether it matches

# Keywords whose value is one subschema, a list of them, or a name -> subschema map.
_ONE = (
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
    "contentSchema",
)
_LIST = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
# Applicators that apply a subschema to the same instance: a $ref cycle through these only
# recurses forever.
_IN_PLACE_ONE = ("not", "if", "then", "else")
_IN_PLACE_LIST = ("allOf", "anyOf", "oneOf")
_REFS = ("$ref", "$dynamicRef")


# --- validators ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> Any:
    """The RE2 program for ``pattern``; raises ``re2.error`` where RE2 cannot run it."""
    return re2.compile(pattern, options=_RE2_OPTIONS)


def _matches(pattern: str, text: str) -> bool:
    return compile_pattern(pattern).search(text) is not None


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _matches(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _matches(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [
        key
        for key in instance
        if key not in properties and not any(_matches(p, key) for p in patterns)
    ]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif additional is False and extras:
        unexpected = ", ".join(repr(e) for e in sorted(extras, key=str))
        yield ValidationError(f"Additional properties are not allowed ({unexpected} unexpected)")


SafeValidator: type[Draft202012Validator] = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    },
)
"""Draft 2020-12 with every regular expression run by RE2."""


def validator(schema: Any) -> Draft202012Validator:
    """A validator for a caller's schema: RE2 patterns, and nothing outside it is fetched."""
    return SafeValidator(schema, registry=NO_RETRIEVAL)


# --- acceptance ---------------------------------------------------------------------------------


def check_untrusted(schema: Any, param: str) -> None:
    """Refuse a schema that could fetch, stall or overflow; raises ``InvalidToolDefinitionError``
    with ``param`` (plus the path inside the schema) naming the offending part."""
    if not isinstance(schema, dict | bool):
        raise InvalidToolDefinitionError("a JSON Schema must be an object", param=param)
    _check_depth(schema, param)
    if len(canonical(schema)) > MAX_SCHEMA_BYTES:
        raise InvalidToolDefinitionError(
            f"schema larger than {MAX_SCHEMA_BYTES // 1000} kB", param=param
        )
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidToolDefinitionError(
            f"not a valid JSON Schema: {exc.message}", param=param
        ) from exc
    subschemas = list(_subschemas(schema, ""))
    for where, node in subschemas:
        _check_keywords(node, _join(param, where))
    _check_no_pattern_with_unevaluated(subschemas, param)
    _check_refs(schema, subschemas, param)


def _check_depth(schema: Any, param: str) -> None:
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise InvalidToolDefinitionError(
                f"schema nested deeper than {MAX_SCHEMA_DEPTH} levels", param=param
            )
        children = node.values() if isinstance(node, dict) else node
        if isinstance(node, dict | list):
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def _subschemas(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object subschema with its path, following only keywords that hold schemas (a
    property named ``$ref`` is a name, and ``enum``/``default`` values are data)."""
    if not isinstance(node, dict):
        return
    yield where, node
    for key in _ONE:
        if isinstance(node.get(key), dict):
            yield from _subschemas(node[key], _join(where, key))
    for key in _LIST:
        if isinstance(node.get(key), list):
            for i, child in enumerate(node[key]):
                yield from _subschemas(child, f"{_join(where, key)}[{i}]")
    for key in _MAP:
        if isinstance(node.get(key), dict):
            for name, child in node[key].items():
                yield from _subschemas(child, _join(_join(where, key), str(name)))


def _check_keywords(node: dict[str, Any], where: str) -> None:
    if "$id" in node:
        raise InvalidToolDefinitionError(
            "$id is not supported: a tool's schema stands alone (use $defs and '#/...' refs)",
            param=_join(where, "$id"),
        )
    dialect = node.get("$schema")
    if dialect is not None and dialect not in KNOWN_DIALECTS:
        raise InvalidToolDefinitionError(
            f"unknown $schema {dialect!r}: leave it out (schemas are JSON Schema 2020-12)",
            param=_join(where, "$schema"),
        )
    for key in _REFS:
        ref = node.get(key)
        if isinstance(ref, str) and not ref.startswith("#"):
            raise InvalidToolDefinitionError(
                f"{key} {ref!r} points outside the schema: only local refs ('#/$defs/...') "
                "are supported, nothing is fetched",
                param=_join(where, key),
            )
    patterns = [("pattern", node["pattern"])] if isinstance(node.get("pattern"), str) else []
    if isinstance(node.get("patternProperties"), dict):
        patterns += [(f"patternProperties.{p}", p) for p in node["patternProperties"]]
    for key, pattern in patterns:
        try:
            compile_pattern(pattern)
        except re2.error as exc:
            raise InvalidToolDefinitionError(
                f"pattern {pattern!r} is not supported: patterns run on a linear-time engine "
                f"(RE2), which has no backreferences or lookaround ({_reason(exc)})",
                param=_join(where, key),
            ) from exc


def _check_no_pattern_with_unevaluated(
    subschemas: list[tuple[str, dict[str, Any]]], param: str
) -> None:
    """jsonschema evaluates ``patternProperties`` with Python's ``re`` when it computes
    ``unevaluatedProperties``; refusing the pair keeps every pattern on RE2."""
    uses = {k for _, node in subschemas for k in ("patternProperties", "unevaluatedProperties")
            if k in node}  # fmt: skip
    if len(uses) == 2:
        where = next(w for w, node in subschemas if "unevaluatedProperties" in node)
        raise InvalidToolDefinitionError(
            "unevaluatedProperties together with patternProperties is not supported",
            param=_join(_join(param, where), "unevaluatedProperties"),
        )


def _check_refs(schema: Any, subschemas: list[tuple[str, dict[str, Any]]], param: str) -> None:
    """Every local ref resolves, and no chain of refs returns to itself in place."""
    resolver = NO_RETRIEVAL.resolver_with_root(DRAFT202012.create_resource(schema))
    targets: dict[str, Any] = {}
    for where, node in subschemas:
        for key in _REFS:
            ref = node.get(key)
            if isinstance(ref, str) and ref not in targets:
                try:
                    targets[ref] = resolver.lookup(ref).contents
                except Unresolvable as exc:
                    raise InvalidToolDefinitionError(
                        f"{key} {ref!r} points to nothing in the schema",
                        param=_join(_join(param, where), key),
                    ) from exc
    edges = {ref: _in_place_refs(target) for ref, target in targets.items()}
    cycle = _find_cycle(edges)
    if cycle:
        raise InvalidToolDefinitionError(
            f"$ref cycle {' -> '.join(cycle)} never reaches a value: it would recurse forever",
            param=param,
        )


def _in_place_refs(node: Any) -> set[str]:
    """Refs applied to the same instance as ``node`` (not to one of its items or properties)."""
    if not isinstance(node, dict):
        return set()
    found = {node[k] for k in _REFS if isinstance(node.get(k), str)}
    for key in _IN_PLACE_ONE:
        found |= _in_place_refs(node.get(key))
    for key in (*_IN_PLACE_LIST, "dependentSchemas"):
        children = node.get(key)
        if isinstance(children, dict):
            children = list(children.values())
        for child in children if isinstance(children, list) else []:
            found |= _in_place_refs(child)
    return found


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle in the ref graph, as the refs along it; iterative, so a long chain is fine."""
    done: set[str] = set()
    for start in edges:
        if start in done:
            continue
        path: list[str] = [start]
        pending: list[list[str]] = [sorted(edges[start])]
        while path:
            if not pending[-1]:
                done.add(path.pop())
                pending.pop()
                continue
            ref = pending[-1].pop()
            if ref in path:
                return [*path[path.index(ref) :], ref]
            if ref in done or ref not in edges:
                continue
            path.append(ref)
            pending.append(sorted(edges[ref]))
    return None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _reason(exc: Exception) -> str:
    text = exc.args[0] if exc.args else exc
    return text.decode(errors="replace") if isinstance(text, bytes) else str(text)
