"""The ToolMaker: turns a task into a validated toolset for the ToolActor."""

from toolsim_toolmaker.app import create_app
from toolsim_toolmaker.config import MakerSettings

__all__ = ["MakerSettings", "create_app"]
