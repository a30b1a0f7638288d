"""Request and response models of the ToolActor API (OpenAI wire formats)."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

JSONSchema = dict[str, Any]
ToolMode = Literal["simulated", "live", "record"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionCall(BaseModel):
    """``tool_call.function`` exactly as a chat completion returns it."""

    name: str = Field(min_length=1, max_length=64)
    arguments: str
    """JSON-encoded arguments (a string, as OpenAI sends them)."""


class ToolCall(BaseModel):
    """One OpenAI ``tool_call`` object."""

    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class ToolCallsRequest(_Model):
    tools: list[dict[str, Any]] | None = None
    """OpenAI tool definitions, inline. Give either this or ``toolset_id``."""
    toolset_id: str | None = None
    """A toolset registered with ``POST /v1/toolsets``."""
    output_schemas: dict[str, JSONSchema] | None = None
    """Output schema per tool name (inline tools only)."""
    stateful: dict[str, bool] | None = None
    """Tools whose observations depend on the episode history (inline tools only)."""
    modes: dict[str, ToolMode] | None = None
    """``simulated`` (default), ``live`` or ``record`` per tool (inline tools only)."""
    live_endpoints: dict[str, str] | None = None
    """Real HTTP endpoint per ``live``/``record`` tool that is not a utility tool."""
    tool_calls: list[ToolCall] = Field(min_length=1, max_length=128)
    episode_id: str | None = None
    seed: int | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.tools is None) == (self.toolset_id is None):
            raise ValueError("give exactly one of 'tools' and 'toolset_id'")
        inline_only = (self.output_schemas, self.stateful, self.modes, self.live_endpoints)
        if self.toolset_id is not None and any(inline_only):
            raise ValueError(
                "'output_schemas', 'stateful', 'modes' and 'live_endpoints' go with inline "
                "'tools' only"
            )
        return self


class ToolMessage(BaseModel):
    role: Literal["tool"] = "tool"
    tool_call_id: str
    content: str


class ObservationInfo(BaseModel):
    tool_call_id: str
    source: Literal["cache", "simulated", "live"]
    latency_ms: float


class ToolCallsResponse(BaseModel):
    messages: list[ToolMessage]
    observations: list[ObservationInfo]


class ToolsetCreate(_Model):
    tools: list[dict[str, Any]] = Field(min_length=1)
    output_schemas: dict[str, JSONSchema] | None = None
    stateful: dict[str, bool] | None = None
    modes: dict[str, ToolMode] | None = None
    live_endpoints: dict[str, str] | None = None


class ToolsetOut(BaseModel):
    id: str
    tools: list[dict[str, Any]]
    output_schemas: dict[str, JSONSchema]
    stateful: dict[str, bool]


class Passage(_Model):
    title: str = ""
    text: str


class Grounding(_Model):
    question: str | None = None
    answer: str | None = None
    passages: list[Passage] = Field(default_factory=list, max_length=64)


class EpisodeCreate(_Model):
    toolset_id: str
    seed: int | None = None
    grounding: Grounding | None = None


class EpisodeOut(BaseModel):
    episode_id: str
    toolset_id: str
    seed: int
