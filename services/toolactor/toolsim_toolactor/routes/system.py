"""Liveness, readiness, metrics and the model list."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from toolsim.http import JSONBytesResponse, liveness_and_metrics
from toolsim_toolactor.state import actor_state

router = APIRouter(tags=["system"])
router.include_router(liveness_and_metrics(lambda request: actor_state(request).metrics.registry))


@router.get("/ready")
async def ready(request: Request) -> Response:
    """200 while the backend can take calls (``degraded`` if the cache is bypassed), else 503."""
    state = actor_state(request)
    backend_ok = await state.backend.ready()
    cache_ok = await state.cache.ping()
    registry_ok = await state.registry.ping()
    state.metrics.cache_degraded.set(0 if cache_ok else 1)
    status = "ready" if cache_ok and registry_ok else "degraded"
    body = {
        "status": status if backend_ok else "unavailable",
        "backend": {"ok": backend_ok, "model": state.backend.model_name},
        "cache": "ok" if cache_ok else "degraded",
        "registry": "ok" if registry_ok else "degraded",
    }
    return JSONBytesResponse(body, status_code=200 if backend_ok else 503)


@router.get("/v1/models")
async def models(request: Request) -> Response:
    state = actor_state(request)
    data = [{"id": state.backend.model_name, "object": "model", "owned_by": "toolsim"}]
    return JSONBytesResponse({"object": "list", "data": data})
