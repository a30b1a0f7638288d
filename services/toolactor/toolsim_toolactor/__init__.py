"""The ToolActor: answers tool calls with simulated observations (OpenAI wire formats)."""

from toolsim_toolactor.app import create_app
from toolsim_toolactor.config import ActorSettings

__all__ = ["ActorSettings", "create_app"]
