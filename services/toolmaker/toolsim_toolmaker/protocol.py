"""Request and response models of the ToolMaker API."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToolsetRequest(_Model):
    """Either a task to generate tools for, or hand-written tools to validate and store."""

    task: str | None = None
    max_tools: int = 3
    """Most task-specific tools to generate (utility tools come on top)."""
    utility_tools: list[str] | None = None
    """Utility tools to merge in; default: chosen by task class. ``[]`` for none."""
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    output_schemas: dict[str, dict[str, Any]] | None = None
    stateful: dict[str, bool] | None = None
    infer_output_schemas: bool | None = None
    """Hand-written tools without an output schema get an inferred one (default true);
    false: they get the fallback ``{"result"}`` schema."""

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.task is None) == (self.tools is None):
            raise ValueError("give exactly one of 'task' and 'tools'")
        if self.tools is not None and self.seed is not None:
            raise ValueError("'seed' goes with 'task' only")
        if self.task is not None and self.infer_output_schemas is not None:
            raise ValueError("'infer_output_schemas' goes with 'tools' (generated tools have one)")
        return self


class ToolsetOut(BaseModel):
    id: str
    task_class: str | None
    tools: list[dict[str, Any]]
    output_schemas: dict[str, dict[str, Any]]
    stateful: dict[str, bool]
    inferred_output_schemas: list[str] | None = None
    """Tools whose output schema was inferred rather than given (absent: none)."""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(BaseModel):
    """The part of an OpenAI chat completion request the ToolMaker face reads."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    seed: int | None = None
    stream: bool = False
    max_tools: int = 3
    utility_tools: list[str] | None = None


ToolsetOrigin = Literal["generated", "hand_written", "openapi"]
