"""An OpenAPI 3.1 document of one toolset's REST endpoints, for agents that consume OpenAPI."""

from __future__ import annotations

from typing import Any

from toolsim.toolsets import Toolset

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
                }
            },
        },
    }


def _operation(toolset: Toolset, name: str) -> dict[str, Any]:
    tool = toolset.tools[name]
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {
        "operationId": name,
        "summary": tool.description.split("\n", 1)[0][:120] or name,
        "description": tool.description or name,
        "parameters": [{"$ref": "#/components/parameters/EpisodeId"}],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": tool.parameters}},
        },
        "responses": {
            "200": {
                "description": "The observation",
                "content": {"application/json": {"schema": tool.output_schema}},
            },
            "400": {"description": "Invalid arguments", **error},
            "404": {"description": "Unknown toolset, tool or episode", **error},
            "502": {"description": "No valid observation could be generated", **error},
            "503": {"description": "The simulator backend is unavailable", **error},
        },
    }
