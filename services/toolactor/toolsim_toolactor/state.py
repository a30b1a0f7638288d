"""What the lifespan builds and the routes use: one object, reached through the request."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from toolsim.llm.base import LLMBackend
from toolsim.registry import Registry
from toolsim_toolactor.cache import ObservationCache
from toolsim_toolactor.config import ActorSettings
from toolsim_toolactor.metrics import ActorMetrics
from toolsim_toolactor.serving import ToolActorService


@dataclass
class ActorState:
    settings: ActorSettings
    backend: LLMBackend
    cache: ObservationCache
    registry: Registry
    metrics: ActorMetrics
    service: ToolActorService


def actor_state(request: Request) -> ActorState:
    state: ActorState = request.app.state.actor
    return state
