"""ToolMaker settings: the one typed configuration of the process (prefix ``TOOLSIM_``)."""

from __future__ import annotations

from pydantic import Field

from toolsim.config import CommonSettings


class MakerSettings(CommonSettings):
    host: str = "127.0.0.1"
    """Interface the ToolMaker listens on."""
    maker_port: int = Field(default=8002, ge=1, le=65535)
    """Port the ToolMaker listens on (``TOOLSIM_MAKER_PORT``)."""
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    """Largest request body accepted; larger ones get 413."""
    max_task_chars: int = Field(default=4000, ge=16)
    """Longest task text accepted."""
    max_tools_limit: int = Field(default=8, ge=1, le=32)
    """Upper bound of ``max_tools`` in a generation request."""
    maker_attempts: int = Field(default=4, ge=1, le=10)
    """Generations tried (each with a new seed) before tool generation fails with 502."""
    maker_temperature: float = Field(default=0.7, ge=0, le=2)
    """Sampling temperature of tool generation."""
    maker_max_tokens: int = Field(default=900, ge=64, le=4096)
    """Longest generated toolset, in tokens."""
