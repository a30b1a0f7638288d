"""Liveness, readiness, metrics and the model list."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from toolsim.http import JSONBytesResponse, liveness_and_metrics
from toolsim_toolmaker.routes.chat import MODEL
from toolsim_toolmaker.state import maker_state

router = APIRouter(tags=["system"])
router.include_router(liveness_and_metrics(lambda request: maker_state(request).metrics.registry))


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


@router.get("/v1/models")
async def models(request: Request) -> Response:
    state = maker_state(request)
    data = [
        {"id": MODEL, "object": "model", "owned_by": "toolsim"},
        {"id": state.backend.model_name, "object": "model", "owned_by": "toolsim"},
    ]
    return JSONBytesResponse({"object": "list", "data": data})
