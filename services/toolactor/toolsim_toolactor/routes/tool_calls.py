"""``POST /v1/tool_calls``: OpenAI ``tool_calls`` in, ``tool`` messages out.

This is the hot path of RL rollouts, so it has one path only, at the ASGI level:
``ToolActorApp`` (the app ``create_app`` returns, whoever serves it) hands this request to
``fast_path`` before FastAPI's routing, dependency injection and middleware stacks. The cache-hit
path pays for HTTP parsing, the service call and one JSON encode. ``DOCUMENTED`` describes the
operation in the OpenAPI document and is never mounted.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send

from toolsim.access import Guard, send_error
from toolsim.apidoc import errors, request_body
from toolsim.errors import ToolsimError
from toolsim.http import receive_body
from toolsim.jsonutil import dumps
from toolsim_toolactor.protocol import ToolCallsRequest, ToolCallsResponse
from toolsim_toolactor.replay import MAX_KEPT_BODY, Kept
from toolsim_toolactor.routes.common import parse_model
from toolsim_toolactor.state import ActorState

log = logging.getLogger(__name__)
PATH = "/v1/tool_calls"


async def answer(state: ActorState, raw: bytes) -> bytes:
    """The whole endpoint: request bytes in, response bytes out (errors raise). A request
    whose response was kept (``replay.py``) is answered from it, before any parsing."""
    started = time.perf_counter()
    kept = state.responses.get(raw) if state.responses is not None else None
    if kept is not None:
        return _replayed(state, kept, started)
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
    encoded = dumps(messages)  # once: the response and a kept copy share it
    kept_for_replay = len(raw) <= MAX_KEPT_BODY and all(obs.replayable for obs in observations)
    if state.responses is not None and kept_for_replay:
        ids = [call.id for call in body.tool_calls]
        state.responses.put(raw, Kept([], encoded, len(ids), ids))
    return dumps({"messages": orjson.Fragment(encoded), "observations": infos})


def _replayed(state: ActorState, kept: Kept, started: float) -> bytes:
    """A kept response: its messages as they were, each observation a cache hit now."""
    state.metrics.cache_hits.inc(kept.observations)
    state.metrics.cache_observations.inc(kept.observations)
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    infos = [
        {"tool_call_id": i, "source": "cache", "latency_ms": latency_ms} for i in kept.call_ids
    ]
    return dumps({"messages": orjson.Fragment(kept.body), "observations": infos})


async def _documented(body: ToolCallsRequest) -> ToolCallsResponse:  # pragma: no cover
    raise AssertionError("documentation only: ToolActorApp answers this path itself")


DOCUMENTED = APIRoute(
    PATH,
    _documented,
    methods=["POST"],
    tags=["tool calls"],
    operation_id="createToolCalls",
    response_model=ToolCallsResponse,
    responses=errors(400, 404, 413, 500, 502, 503, 504),
    openapi_extra=request_body(ToolCallsRequest, "Give either inline 'tools' or a 'toolset_id'"),
)
"""The operation as the OpenAPI document shows it; never mounted (``fast_path`` answers it)."""


def handles(scope: Scope) -> bool:
    """Whether ``fast_path`` answers this request."""
    return bool(scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST")


async def fast_path(
    state: ActorState, guard: Guard | None, scope: Scope, receive: Receive, send: Send
) -> None:
    """The whole endpoint at the ASGI level: key check, body, ``answer``, one response."""
    if guard is not None:
        refused = await guard.admit(scope)
        if refused is not None:
            await send_error(send, refused)
            return
    started = time.perf_counter()
    try:
        raw = await receive_body(scope, receive, state.settings.max_body_bytes)
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
