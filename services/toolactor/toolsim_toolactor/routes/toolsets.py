"""Toolsets: registration, lookup, their tools as REST endpoints, and their OpenAPI document."""

from __future__ import annotations

from fastapi import APIRouter, Header, Query, Request
from starlette.responses import Response

from toolsim.apidoc import errors, link, request_body
from toolsim.http import JSONBytesResponse, parse_json, read_body
from toolsim.toolsets import Toolset
from toolsim_toolactor.openapi import toolset_openapi
from toolsim_toolactor.protocol import ToolsetCreate, ToolsetOut
from toolsim_toolactor.replay import replayability_of
from toolsim_toolactor.routes.common import parse_model
from toolsim_toolactor.serving import Observation
from toolsim_toolactor.state import actor_state

router = APIRouter(tags=["toolsets"])


def _toolset_out(toolset: Toolset) -> dict[str, object]:
    return toolset.to_record()


TOOLSET_ID = "$response.body#/id"
CREATED = {
    "description": "The registered toolset (ids are content-addressed)",
    "links": {
        "GetToolset": link("getToolset", "The toolset", toolset_id=TOOLSET_ID),
        "GetToolsetOpenAPI": link(
            "getToolsetOpenAPI", "Its tools' REST endpoints", toolset_id=TOOLSET_ID
        ),
        "CallTool": link(
            "callTool",
            "Its first tool as a REST endpoint",
            toolset_id=TOOLSET_ID,
            name="$response.body#/tools/0/function/name",
        ),
        "CreateEpisode": {
            **link("createEpisode", "An episode over this toolset"),
            "requestBody": {"toolset_id": TOOLSET_ID},
        },
    },
}
ARGUMENTS = {
    "requestBody": {
        "required": True,
        "description": "The tool's arguments: an object valid against its 'parameters' "
        "(each toolset's GET /v1/toolsets/{toolset_id}/openapi.json gives the exact schema)",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}


@router.post(
    "/v1/toolsets",
    status_code=201,
    operation_id="createToolset",
    response_model=ToolsetOut,
    response_model_exclude_none=True,
    responses={201: CREATED, **errors(400, 413, 503, 507)},
    openapi_extra=request_body(ToolsetCreate),
)
async def create_toolset(request: Request) -> Response:
    state = actor_state(request)
    body = parse_model(ToolsetCreate, await read_body(request, state.settings.max_body_bytes))
    toolset = await state.service.register_toolset(
        body.tools,
        body.output_schemas,
        body.stateful,
        dict(body.modes) if body.modes else None,
        body.live_endpoints,
        body.retrieval,
        body.faults,
        body.infer_output_schemas,
    )
    return JSONBytesResponse(_toolset_out(toolset), status_code=201)


@router.get(
    "/v1/toolsets/{toolset_id}",
    operation_id="getToolset",
    response_model=ToolsetOut,
    responses=errors(404, 503),
)
async def get_toolset(toolset_id: str, request: Request) -> Response:
    toolset = await actor_state(request).service.get_toolset(toolset_id)
    return JSONBytesResponse(_toolset_out(toolset))


@router.get(
    "/v1/toolsets/{toolset_id}/openapi.json",
    operation_id="getToolsetOpenAPI",
    responses={200: {"description": "An OpenAPI 3.1 document"}, **errors(404, 503)},
)
async def toolset_openapi_document(toolset_id: str, request: Request) -> Response:
    toolset = await actor_state(request).service.get_toolset(toolset_id)
    server = str(request.base_url).rstrip("/")
    return JSONBytesResponse(toolset_openapi(toolset, server))


@router.post(
    "/v1/toolsets/{toolset_id}/tools/{name}",
    operation_id="callTool",
    responses={
        200: {
            "description": "The observation, valid against the tool's output schema "
            "(headers X-Toolsim-Source, X-Toolsim-Flags, X-Toolsim-Fault)",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        **errors(400, 404, 413, 500, 502, 503, 504),
    },
    openapi_extra=ARGUMENTS,
)
async def call_tool(
    toolset_id: str,
    name: str,
    request: Request,
    x_episode_id: str | None = Header(default=None),
    seed: int | None = Query(default=None),
) -> Response:
    state = actor_state(request)
    arguments = parse_json(await read_body(request, state.settings.max_body_bytes))
    observation = await state.service.call_tool(toolset_id, name, arguments, x_episode_id, seed)
    if (replayability := replayability_of(request.scope)) is not None:
        replayability.replayable = observation.replayable
    return JSONBytesResponse(observation.content, headers=observation_headers(observation))


def observation_headers(observation: Observation) -> dict[str, str]:
    """Where the REST face says what ``observations[]`` says on ``/v1/tool_calls``."""
    headers: dict[str, str] = {"X-Toolsim-Source": observation.source}
    if not observation.verdict.passed:
        headers["X-Toolsim-Flags"] = ",".join(observation.verdict.flags)
        for flag, reason in observation.verdict.failures.items():
            headers[f"X-Toolsim-{flag.capitalize()}"] = reason
    if observation.fault is not None:
        headers["X-Toolsim-Fault"] = observation.fault
    return headers
