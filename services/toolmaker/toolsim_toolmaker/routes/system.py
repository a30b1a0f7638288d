"""Liveness, readiness, metrics and the model list."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from toolsim.http import JSONBytesResponse
from toolsim_toolmaker.routes.chat import MODEL
from toolsim_toolmaker.state import maker_state

router = APIRouter(tags=["system"])


@router.get("/health")
async def health() -> Response:
    return JSONBytesResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> Response:
    state = maker_state(request)
    backend_ok = await state.backend.ready()
    registry_ok = await state.registry.ping()
    ok = backend_ok and registry_ok
    body = {
        "status": "ready" if ok else "unavailable",
        "backend": {"ok": backend_ok, "model": state.backend.model_name},
        "registry": "ok" if registry_ok else "unavailable",
    }
    return JSONBytesResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    registry = maker_state(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
async def models(request: Request) -> Response:
    state = maker_state(request)
    data = [
        {"id": MODEL, "object": "model", "owned_by": "toolsim"},
        {"id": state.backend.model_name, "object": "model", "owned_by": "toolsim"},
    ]
    return JSONBytesResponse({"object": "list", "data": data})
