"""What the lifespan builds and the routes use: one object, reached through the request."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from toolsim.llm.base import LLMBackend
from toolsim.registry import Registry
from toolsim_toolactor.cache import ObservationCache
from toolsim_toolactor.config import ActorSettings
from toolsim_toolactor.metrics import ActorMetrics
from toolsim_toolactor.replay import ReplayFront, ResponseCache
from toolsim_toolactor.serving import ToolActorService


@dataclass
class ActorState:
    settings: ActorSettings
    backend: LLMBackend
    cache: ObservationCache
    registry: Registry
    metrics: ActorMetrics
    service: ToolActorService
    responses: ResponseCache | None = None
    """Whole responses kept for replay (None: the near-cache is off)."""
    front: ReplayFront | None = None
    """Replays them on the REST and MCP faces, in front of FastAPI."""


def actor_state(request: Request) -> ActorState:
    state: ActorState = request.app.state.actor
    return state
