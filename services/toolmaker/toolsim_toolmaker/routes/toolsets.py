"""Toolsets: generate from a task, store hand-written ones, import OpenAPI, read them back."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from toolsim.apidoc import errors, link, request_body
from toolsim.errors import InvalidRequestError
from toolsim.http import JSONBytesResponse, parse_json, parse_model, read_body
from toolsim.jsonutil import MAX_SAFE_INT
from toolsim_toolmaker.protocol import ToolsetOut, ToolsetRequest
from toolsim_toolmaker.state import maker_state

router = APIRouter(tags=["toolsets"])


CREATED = {
    "description": "The stored toolset (ids are content-addressed)",
    "links": {"GetToolset": link("getToolset", "The toolset", toolset_id="$response.body#/id")},
}
OPENAPI_DOCUMENT = {
    "requestBody": {
        "required": True,
        "description": "An OpenAPI 3.0 or 3.1 document",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}


@router.post(
    "/v1/toolsets",
    status_code=201,
    operation_id="createToolset",
    response_model=ToolsetOut,
    responses={201: CREATED, **errors(400, 413, 502, 503)},
    openapi_extra=request_body(ToolsetRequest, "Give either a 'task' or hand-written 'tools'"),
)
async def create_toolset(request: Request) -> Response:
    state = maker_state(request)
    body = parse_model(ToolsetRequest, await read_body(request, state.settings.max_body_bytes))
    return JSONBytesResponse(await state.service.create(body), status_code=201)


@router.post(
    "/v1/toolsets/import",
    status_code=201,
    operation_id="importToolset",
    response_model=ToolsetOut,
    responses={201: CREATED, **errors(400, 413, 503)},
    openapi_extra=OPENAPI_DOCUMENT,
)
async def import_toolset(
    request: Request, infer_output_schemas: bool = Query(default=True)
) -> Response:
    state = maker_state(request)
    document = parse_json(await read_body(request, state.settings.max_body_bytes))
    if not isinstance(document, dict):
        raise InvalidRequestError("an OpenAPI document is a JSON object")
    record = await state.service.from_openapi(document, infer=infer_output_schemas)
    return JSONBytesResponse(record, status_code=201)


@router.get(
    "/v1/toolsets/{toolset_id}",
    operation_id="getToolset",
    response_model=ToolsetOut,
    responses=errors(404, 503),
)
async def get_toolset(toolset_id: str, request: Request) -> Response:
    return JSONBytesResponse(await maker_state(request).service.get(toolset_id))


@router.get("/v1/toolsets", operation_id="listToolsets", responses=errors(400, 503))
async def list_toolsets(
    request: Request,
    offset: int = Query(default=0, ge=0, le=MAX_SAFE_INT),
    limit: int = Query(default=20, ge=1, le=100),
) -> Response:
    records, total = await maker_state(request).service.page(offset, limit)
    page = {
        "object": "list",
        "data": records,
        "offset": offset,
        "limit": limit,
        "total": total,
        "has_more": offset + len(records) < total,
    }
    return JSONBytesResponse(page)
