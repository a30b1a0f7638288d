"""``POST /v1/tool_calls``: OpenAI ``tool_calls`` in, ``tool`` messages out.

This is the hot path of RL rollouts, so it is served by ``ToolCallsEndpoint``, a plain ASGI
app in front of FastAPI: the cache-hit path pays for HTTP parsing, the service call and one
JSON encode, and not for routing, dependency injection or middleware stacks. The FastAPI
route below answers the same way and documents the endpoint in the service's OpenAPI.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from toolsim.access import Guard, send_error
from toolsim.apidoc import errors, request_body
from toolsim.errors import PayloadTooLargeError, ToolsimError
from toolsim.http import JSONBytesResponse, read_body
from toolsim.jsonutil import dumps
from toolsim_toolactor.protocol import ToolCallsRequest, ToolCallsResponse
from toolsim_toolactor.routes.common import parse_model
from toolsim_toolactor.state import ActorState, actor_state

log = logging.getLogger(__name__)
router = APIRouter()
PATH = "/v1/tool_calls"


async def answer(state: ActorState, raw: bytes) -> bytes:
    """The whole endpoint: request bytes in, response bytes out (errors raise)."""
    body = parse_model(ToolCallsRequest, raw)
    observations = await state.service.tool_calls(body)
    messages = []
    infos = []
    for call, obs in zip(body.tool_calls, observations, strict=True):
        messages.append({"role": "tool", "tool_call_id": call.id, "content": obs.content.decode()})
        info: dict[str, Any] = {
            "tool_call_id": call.id,
            "source": obs.source,
            "latency_ms": round(obs.latency_ms, 3),
        }
        if not obs.verdict.passed:
            info["flags"] = list(obs.verdict.flags)
            for flag, reason in obs.verdict.failures.items():
                info[flag] = {"reason": reason}
        if obs.fault is not None:
            info["fault"] = obs.fault
        infos.append(info)
    return dumps({"messages": messages, "observations": infos})


@router.post(
    PATH,
    tags=["tool calls"],
    operation_id="createToolCalls",
    response_model=ToolCallsResponse,
    responses=errors(400, 404, 413, 500, 502, 503, 504),
    openapi_extra=request_body(ToolCallsRequest, "Give either inline 'tools' or a 'toolset_id'"),
)
async def tool_calls(request: Request) -> Response:
    state = actor_state(request)
    raw = await read_body(request, state.settings.max_body_bytes)
    return JSONBytesResponse(await answer(state, raw))


class ToolCallsEndpoint:
    """Serves ``POST /v1/tool_calls`` directly; passes every other request to ``app``."""

    def __init__(self, app: ASGIApp, fastapi_app: object) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        # Set by create_app when API keys are: the hot path checks its own requests, so
        # ``toolsim serve``'s outer copy of this endpoint is guarded as the inner one is.
        self.guard: Guard | None = getattr(fastapi_app.state, "guard", None)  # type: ignore[attr-defined]

    @staticmethod
    def handles(scope: Scope) -> bool:
        return bool(scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self.guard is not None:
            refused = await self.guard.admit(scope)
            if refused is not None:
                await send_error(send, refused)
                return
        started = time.perf_counter()
        state: ActorState = self.fastapi_app.state.actor  # type: ignore[attr-defined]
        try:
            raw = await _read(scope, receive, state.settings.max_body_bytes)
            status, payload, headers = 200, await answer(state, raw), []
        except ToolsimError as exc:
            status, payload = exc.status_code, dumps(exc.to_envelope())
            headers = [(k.lower().encode(), v.encode()) for k, v in exc.headers().items()]
        except Exception as exc:
            log.exception("unhandled error", exc_info=exc)
            error = ToolsimError("internal error; see the server log")
            status, payload, headers = 500, dumps(error.to_envelope()), []
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        state.metrics.observe_request(PATH, status, time.perf_counter() - started)


async def _read(scope: Scope, receive: Receive, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise PayloadTooLargeError(f"request body of {int(value)} bytes exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
