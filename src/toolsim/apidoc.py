"""What the services' OpenAPI documents say that FastAPI cannot infer from the routes.

The routes read their own bodies (one body reader, every error in the envelope), so FastAPI
sees no request model and documents no body, and it promises a 422 no route answers (a bad
path or query parameter is a 400 envelope). ``request_body(Model)`` documents the body a
route parses, ``errors(...)`` the envelope on each failing status, and ``install(app, ...)``
puts the request models in ``components`` and drops the 422s.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, models_json_schema
from pydantic_core import core_schema
from starlette.routing import BaseRoute

REF = "#/components/schemas/{model}"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    """The request field at fault (``tool_calls[0].function.arguments.city``), if one is."""
    code: str
    """Stable, for programs: ``invalid_request``, ``toolset_not_found``, ..."""


class ErrorEnvelope(BaseModel):
    """The OpenAI error envelope: every failure of every route comes in it."""

    error: ErrorDetail


ERROR_STATUSES: dict[int, str] = {
    400: "Malformed body or parameter, invalid tool definition or arguments",
    401: "Missing or unknown API key (only when the server has API keys)",
    404: "Unknown toolset, tool or episode",
    413: "Body over the server's size limit",
    429: "The API key's rate is spent, or an injected rate-limit fault (Retry-After)",
    500: "Injected tool_server_error fault (only with a fault policy)",
    502: "No valid observation could be generated, or a live tool failed",
    503: "Backend or registry unavailable, or an injected fault (Retry-After)",
    504: "Injected tool_timeout fault (only with a fault policy)",
    507: "The in-memory registry is full",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries: the envelope on each of ``statuses`` (and on 401 and 429, which
    the API-key guard answers on every route)."""
    return {
        status: {"model": ErrorEnvelope, "description": ERROR_STATUSES[status]}
        for status in sorted({*statuses, 401, 429})
    }


def request_body(model: type[BaseModel], description: str = "") -> dict[str, Any]:
    """``openapi_extra=`` of a route that parses ``model`` from its body itself."""
    schema = {"$ref": REF.format(model=model.__name__)}
    content = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": True, "description": description, "content": content}}


def link(operation_id: str, description: str, **parameters: str) -> dict[str, Any]:
    """An OpenAPI link: ``parameters`` map the target's parameters to runtime expressions."""
    return {"operationId": operation_id, "description": description, "parameters": parameters}


class RequestSchema(GenerateJsonSchema):
    """Request fields that default to ``None`` are documented without ``null``: a client
    leaves them out (an explicit null means the same, but is no use to document)."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        generated = super().default_schema(schema)
        if generated.get("default", 0) is None:
            del generated["default"]
        return generated


def install(
    app: FastAPI, request_models: Iterable[type[BaseModel]], documented: Iterable[BaseRoute] = ()
) -> None:
    """Make ``app.openapi()`` carry ``request_models`` and no 422 (see the module docstring),
    and the operations of ``documented``: routes answered below FastAPI's routing (the
    ToolActor's fast path), described here and never mounted."""
    models = tuple(request_models)
    extra = tuple(documented)

    def generate() -> dict[str, Any]:
        return get_openapi(
            title=app.title,
            version=app.version,
            openapi_version=app.openapi_version,
            summary=app.summary,
            description=app.description,
            routes=[*extra, *app.routes],
            tags=app.openapi_tags,
            servers=app.servers,
            separate_input_output_schemas=app.separate_input_output_schemas,
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        _, defs = models_json_schema(
            [(m, "validation") for m in models], ref_template=REF, schema_generator=RequestSchema
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name, schema in defs.get("$defs", {}).items():
            schemas.setdefault(name, schema)  # a response's model, nulls and all, stays
        for operation in _operations(document):
            operation.get("responses", {}).pop("422", None)
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _operations(document: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for path in document.get("paths", {}).values():
        yield from (op for op in path.values() if isinstance(op, dict))
