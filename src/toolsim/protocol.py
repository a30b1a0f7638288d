"""Request field types both services take: validated as their code needs, documented (in
the OpenAPI documents) as that code accepts, so a client generated from a document builds
bodies the route takes. ``build_toolset`` checks what JSON Schema cannot say (a map's keys
name tools of the toolset, tool names are unique)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, WithJsonSchema

from toolsim.jsonutil import MAX_SAFE_INT
from toolsim.toolsets import (
    JSON_SCHEMA,
    MAX_TOOLS,
    TOOL_DEFINITION_SCHEMA,
    fits_json,
    tool_map_schema,
)

Seed = Annotated[int, Field(ge=-MAX_SAFE_INT, le=MAX_SAFE_INT)]
Tools = Annotated[
    list[dict[str, Any]],
    AfterValidator(fits_json),
    WithJsonSchema(
        {"type": "array", "items": TOOL_DEFINITION_SCHEMA, "minItems": 1, "maxItems": MAX_TOOLS}
    ),
]
OutputSchemas = Annotated[
    dict[str, dict[str, Any]],
    AfterValidator(fits_json),
    WithJsonSchema(tool_map_schema(JSON_SCHEMA, "Output JSON Schemas")),
]
Stateful = Annotated[
    dict[str, bool],
    WithJsonSchema(tool_map_schema({"type": "boolean"}, "Observations depend on the history")),
]
Retrieval = Annotated[
    dict[str, bool],
    WithJsonSchema(tool_map_schema({"type": "boolean"}, "Grounded observations carry evidence")),
]
Modes = Annotated[
    dict[str, Literal["simulated", "live", "record"]],
    WithJsonSchema(
        tool_map_schema({"enum": ["simulated", "live", "record"]}, "How each tool is answered")
    ),
]
LiveEndpoints = Annotated[
    dict[str, str],
    WithJsonSchema(
        tool_map_schema(
            {"type": "string", "format": "uri", "pattern": "^https?://"},
            "Real HTTP endpoint of a live or record tool",
        )
    ),
]
