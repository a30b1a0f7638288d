"""Request and response models of the ToolMaker API."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from toolsim.protocol import OutputSchemas, Seed, Stateful
from toolsim.tools import UTILITY_TOOLS
from toolsim.toolsets import MAX_TOOLS, TOOL_DEFINITION_SCHEMA, fits_json

_WITH_TASK = ("task", "max_tools", "utility_tools", "seed")
_WITH_TOOLS = ("tools", "output_schemas", "stateful", "infer_output_schemas")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _described(definition: dict[str, Any]) -> dict[str, Any]:
    """A tool definition as the ToolMaker stores it: with a description (and, with
    ``"strict": true``, parameters in OpenAI's strict form, said in prose)."""
    function = definition["properties"]["function"]
    text = {**function["properties"]["description"], "pattern": r"\S"}
    properties = {**function["properties"], "description": text}
    required = [*function["required"], "description"]
    tool = {**function, "properties": properties, "required": required}
    return {**definition, "properties": {**definition["properties"], "function": tool}}


MakerTools = Annotated[
    list[dict[str, Any]],
    AfterValidator(fits_json),
    WithJsonSchema(
        {
            "type": "array",
            "items": _described(TOOL_DEFINITION_SCHEMA),
            "minItems": 1,
            "maxItems": MAX_TOOLS,
        }
    ),
]


class ToolsetRequest(_Model):
    """Either a task to generate tools for, or hand-written tools to validate and store."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {"required": ["task"], "not": {"anyOf": [{"required": [f]} for f in _WITH_TOOLS]}},
                {"required": ["tools"], "not": {"anyOf": [{"required": [f]} for f in _WITH_TASK]}},
            ]
        },
    )

    # Bounds the service checks against its settings (max_task_chars, max_tools_limit),
    # documented at their defaults.
    task: str | None = Field(default=None, json_schema_extra={"pattern": r"\S", "maxLength": 4000})
    max_tools: int = Field(default=3, json_schema_extra={"minimum": 1, "maximum": 8})
    """Most task-specific tools to generate (utility tools come on top); at most
    ``TOOLSIM_MAX_TOOLS_LIMIT``."""
    utility_tools: list[str] | None = Field(
        default=None, json_schema_extra={"items": {"enum": list(sorted(UTILITY_TOOLS))}}
    )
    """Utility tools to merge in; default: chosen by task class. ``[]`` for none."""
    seed: Seed | None = None
    tools: MakerTools | None = None
    output_schemas: OutputSchemas | None = None
    stateful: Stateful | None = None
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
    seed: Seed | None = None
    stream: bool = False
    max_tools: int = 3
    utility_tools: list[str] | None = None


ToolsetOrigin = Literal["generated", "hand_written", "openapi"]
