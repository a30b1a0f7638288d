"""What the lifespan builds and the routes use."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from toolsim.llm.base import LLMBackend
from toolsim.registry import Registry
from toolsim_toolmaker.config import MakerSettings
from toolsim_toolmaker.metrics import MakerMetrics
from toolsim_toolmaker.serving import ToolMakerService


@dataclass
class MakerState:
    settings: MakerSettings
    backend: LLMBackend
    registry: Registry
    metrics: MakerMetrics
    service: ToolMakerService


def maker_state(request: Request) -> MakerState:
    state: MakerState = request.app.state.maker
    return state
