"""The peers the ToolActor's cache-hit path is compared with, served exactly like it.

python bench/peers.py fastapi PORT   # FastAPI endpoint: validates a pydantic body, fixed JSON
python bench/peers.py asgi PORT      # raw ASGI app returning fixed JSON: the HTTP ceiling
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

FIXED = (
    b'{"messages":[{"role":"tool","tool_call_id":"call_1","content":"{\\"city\\":\\"Paris\\",'
    b'\\"temperature_c\\":18.5,\\"conditions\\":\\"Partly cloudy\\"}"}],"observations":'
    b'[{"tool_call_id":"call_1","source":"cache","latency_ms":0.05}]}'
)


class Function(BaseModel):
    name: str
    arguments: str


class Call(BaseModel):
    id: str
    type: str
    function: Function


class Body(BaseModel):
    tools: list[dict[str, Any]]
    output_schemas: dict[str, dict[str, Any]] | None = None
    tool_calls: list[Call]


def fastapi_app() -> FastAPI:
    from starlette.responses import Response

    app = FastAPI()

    @app.post("/v1/tool_calls")
    async def tool_calls(body: Body) -> Response:
        return Response(FIXED, media_type="application/json")

    return app


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:  # drain the body, as any real endpoint must
        message = await receive()
        more = message.get("more_body", False)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(FIXED)).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": FIXED})


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    app: Any = fastapi_app() if kind == "fastapi" else asgi_app
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
