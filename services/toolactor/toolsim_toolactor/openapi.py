"""An OpenAPI 3.1 document of one toolset's REST endpoints, for agents that consume OpenAPI."""

from __future__ import annotations

from typing import Any

from toolsim.apidoc import ERROR_STATUSES
from toolsim.toolsets import Toolset

CALL_TOOL_ERRORS = (400, 401, 404, 413, 429, 500, 502, 503, 504)
"""What the REST tool endpoint answers besides 200: the service document's ``callTool``."""

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
            "required": ["message", "type", "param", "code"],
        }
    },
    "required": ["error"],
}


def toolset_openapi(toolset: Toolset, server_url: str) -> dict[str, Any]:
    paths = {
        f"/v1/toolsets/{toolset.id}/tools/{name}": {"post": _operation(toolset, name)}
        for name in toolset.tools
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"toolsim toolset {toolset.id}",
            "version": toolset.id,
            "description": "Simulated tools served by the toolsim ToolActor.",
        },
        "servers": [{"url": server_url}],
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "parameters": {
                "EpisodeId": {
                    "name": "X-Episode-Id",
                    "in": "header",
                    "required": False,
                    "description": "Episode the call belongs to (consistency, grounding).",
                    "schema": {"type": "string"},
                },
                "Seed": {
                    "name": "seed",
                    "in": "query",
                    "required": False,
                    "description": "Seed of the observation (default: the episode's).",
                    "schema": {"type": "integer"},
                },
            },
            "headers": {
                "Source": {
                    "description": "simulated, cache or live",
                    "schema": {"type": "string", "enum": ["simulated", "cache", "live"]},
                },
                "Flags": {
                    "description": "The gates a flagged observation failed, comma-separated",
                    "schema": {"type": "string"},
                },
                "Fault": {
                    "description": "The body fault injected into the observation",
                    "schema": {"type": "string"},
                },
            },
            # API keys, only when the server has them (TOOLSIM_API_KEYS): else no security
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    }


def _operation(toolset: Toolset, name: str) -> dict[str, Any]:
    tool = toolset.tools[name]
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {
        "operationId": name,
        "summary": tool.description.split("\n", 1)[0][:120] or name,
        "description": tool.description or name,
        "parameters": [
            {"$ref": "#/components/parameters/EpisodeId"},
            {"$ref": "#/components/parameters/Seed"},
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": tool.parameters}},
        },
        "responses": {
            "200": {
                "description": "The observation",
                "headers": {
                    f"X-Toolsim-{name}": {"$ref": f"#/components/headers/{name}"}
                    for name in ("Source", "Flags", "Fault")
                },
                "content": {"application/json": {"schema": tool.output_schema}},
            },
            **{
                str(status): {"description": ERROR_STATUSES[status], **error}
                for status in CALL_TOOL_ERRORS
            },
        },
    }
