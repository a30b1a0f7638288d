"""``POST /v1/tool_calls``: OpenAI ``tool_calls`` in, ``tool`` messages out."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from toolsim.http import JSONBytesResponse, read_body
from toolsim_toolactor.protocol import ToolCallsRequest
from toolsim_toolactor.routes.common import parse_model
from toolsim_toolactor.state import actor_state

router = APIRouter()


@router.post("/v1/tool_calls", tags=["tool calls"])
async def tool_calls(request: Request) -> Response:
    state = actor_state(request)
    body = parse_model(ToolCallsRequest, await read_body(request, state.settings.max_body_bytes))
    observations = await state.service.tool_calls(body)
    messages = []
    infos = []
    for call, obs in zip(body.tool_calls, observations, strict=True):
        messages.append({"role": "tool", "tool_call_id": call.id, "content": obs.content.decode()})
        infos.append(
            {"tool_call_id": call.id, "source": obs.source, "latency_ms": round(obs.latency_ms, 3)}
        )
    return JSONBytesResponse({"messages": messages, "observations": infos})
