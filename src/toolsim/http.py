"""HTTP plumbing shared by the services: the error envelope, bodies, fast JSON responses."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from toolsim.errors import InvalidRequestError, PayloadTooLargeError, ToolsimError

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


class JSONBytesResponse(Response):
    """A response whose body is already JSON bytes (or anything orjson can encode)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            return content
        return orjson.dumps(content)


def error_response(exc: ToolsimError) -> Response:
    return JSONBytesResponse(exc.to_envelope(), status_code=exc.status_code, headers=exc.headers())


def validation_error(exc: ValidationError | RequestValidationError) -> InvalidRequestError:
    """The first pydantic error as an ``InvalidRequestError`` whose ``param`` is its path."""
    first = exc.errors()[0]
    loc = [p for p in first.get("loc", ()) if p != "body"]
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    return InvalidRequestError(
        f"{param or 'body'}: {first.get('msg', 'invalid')}", param=param or None
    )


async def receive_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes with 413 (a declared length over it
    before reading anything; a streamed body as soon as it passes it). Every route's reader."""
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


async def read_body(request: Request, limit: int) -> bytes:
    """``receive_body`` for a FastAPI route (read once: the body is not cached on ``request``)."""
    return await receive_body(request.scope, request.receive, limit)


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from exc


NO_OTEL: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}
"""``FastAPI(telemetry=NO_OTEL)``: the services export Prometheus metrics of their own; FastAPI's
built-in OpenTelemetry hooks otherwise cost every request a provider check (~9 us here)."""


def install_error_handlers(app: FastAPI) -> None:
    """Every failure leaves as the OpenAI envelope; no stack trace reaches a client."""

    async def on_toolsim(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ToolsimError)
        return error_response(exc)

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError | ValidationError)
        return error_response(validation_error(exc))

    async def on_http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        envelope = {
            "error": {
                "message": str(exc.detail),
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
        return JSONBytesResponse(envelope, status_code=exc.status_code)

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return error_response(ToolsimError("internal error; see the server log"))

    app.add_exception_handler(ToolsimError, on_toolsim)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(ValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


def parse_model(model: type[M], body: bytes) -> M:
    """Validate a JSON body into ``model``; errors become ``InvalidRequestError``."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "json_invalid":
            raise InvalidRequestError(
                f"request body is not valid JSON: {exc.errors()[0]['msg']}"
            ) from exc
        raise validation_error(exc) from exc


class MetricsMiddleware:
    """Counts requests and times them by route template (a plain ASGI middleware: cheap)."""

    def __init__(self, app: ASGIApp, observe: Callable[[str, int, float], None]) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            label = getattr(scope.get("route"), "path", "unmatched")
            self.observe(label, status, time.perf_counter() - started)


def liveness_and_metrics(registry_of: Callable[[Request], CollectorRegistry]) -> APIRouter:
    """``GET /health`` and ``GET /metrics`` (Prometheus text), the same in every service."""
    router = APIRouter(tags=["system"])

    @router.get("/health")
    async def health() -> Response:
        return JSONBytesResponse({"status": "ok"})

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry_of(request)), media_type=CONTENT_TYPE_LATEST)

    return router
