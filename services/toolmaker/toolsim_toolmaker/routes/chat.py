"""An OpenAI-compatible face: ``POST /v1/chat/completions`` with ``model: "toolmaker"``.

The last user message is the task; the assistant message's content is the toolset as JSON,
so the official ``openai`` SDK can drive tool generation.
"""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request
from starlette.responses import Response

from toolsim.apidoc import errors, request_body
from toolsim.errors import InvalidRequestError, NotFoundError
from toolsim.http import JSONBytesResponse, parse_model, read_body
from toolsim.jsonutil import dumps
from toolsim_toolmaker.protocol import ChatCompletionRequest
from toolsim_toolmaker.state import maker_state

router = APIRouter(tags=["openai"])
MODEL = "toolmaker"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


@router.post(
    "/v1/chat/completions",
    responses=errors(400, 404, 413, 502, 503),
    openapi_extra=request_body(ChatCompletionRequest),
)
async def chat_completions(request: Request) -> Response:
    state = maker_state(request)
    body = parse_model(
        ChatCompletionRequest, await read_body(request, state.settings.max_body_bytes)
    )
    if body.model != MODEL:
        raise ModelNotFoundError(f"model {body.model!r} not found; use {MODEL!r}", param="model")
    if body.stream:
        raise InvalidRequestError("streaming is not supported", param="stream")
    task = _task(body)
    record = await state.service.from_task(task, body.max_tools, body.utility_tools, body.seed or 0)
    content = dumps(record).decode()
    completion = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": content},
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }
    return JSONBytesResponse(completion)


def _task(body: ChatCompletionRequest) -> str:
    for message in reversed(body.messages):
        if message.role == "user":
            if isinstance(message.content, str):
                return message.content
            parts = [p.get("text", "") for p in message.content or [] if p.get("type") == "text"]
            return "\n".join(parts)
    raise InvalidRequestError("no user message holds the task", param="messages")
