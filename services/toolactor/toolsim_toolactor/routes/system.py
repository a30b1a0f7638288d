"""Liveness, readiness, metrics and the model list."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from toolsim.http import JSONBytesResponse
from toolsim_toolactor.state import actor_state

router = APIRouter(tags=["system"])


@router.get("/health")
async def health() -> Response:
    return JSONBytesResponse({"status": "ok"})


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


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    registry = actor_state(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
async def models(request: Request) -> Response:
    state = actor_state(request)
    data = [{"id": state.backend.model_name, "object": "model", "owned_by": "toolsim"}]
    return JSONBytesResponse({"object": "list", "data": data})
