"""Request and response models of the ToolActor API (OpenAI wire formats)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from toolsim.protocol import (
    LiveEndpoints,
    Modes,
    OutputSchemas,
    Retrieval,
    Seed,
    Stateful,
    Tools,
)

JSONSchema = dict[str, Any]
ToolMode = Literal["simulated", "live", "record"]
Source = Literal["cache", "simulated", "live", "fault"]
MAX_DELAY_MS = 600_000.0
INLINE_ONLY = (
    "output_schemas",
    "stateful",
    "modes",
    "live_endpoints",
    "retrieval",
    "faults",
    "infer_output_schemas",
)
"""Fields of ``POST /v1/tool_calls`` that go with inline ``tools`` only."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _required(name: str) -> dict[str, Any]:
    return {"required": [name]}


class FunctionCall(BaseModel):
    """``tool_call.function`` exactly as a chat completion returns it."""

    name: str = Field(min_length=1, max_length=64)
    arguments: str = Field(json_schema_extra={"contentMediaType": "application/json"})
    """JSON-encoded arguments (a string, as OpenAI sends them), valid against the tool's
    ``parameters``."""


class ToolCall(BaseModel):
    """One OpenAI ``tool_call`` object."""

    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class ConstantLatency(_Model):
    distribution: Literal["constant"] = "constant"
    ms: float = Field(ge=0, le=MAX_DELAY_MS)


class UniformLatency(_Model):
    distribution: Literal["uniform"]
    low_ms: float = Field(ge=0, le=MAX_DELAY_MS)
    high_ms: float = Field(ge=0, le=MAX_DELAY_MS)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.high_ms < self.low_ms:
            raise ValueError("latency_ms.high_ms must be at least latency_ms.low_ms")
        return self


class ExponentialLatency(_Model):
    distribution: Literal["exponential"]
    mean_ms: float = Field(gt=0, le=MAX_DELAY_MS)


class LognormalLatency(_Model):
    distribution: Literal["lognormal"]
    median_ms: float = Field(gt=0, le=MAX_DELAY_MS)
    sigma: float = Field(default=0.5, ge=0, le=4)
    """Spread of the log of the delay (0.5: p90 is about 1.9x the median)."""


Latency = Annotated[
    ConstantLatency | UniformLatency | ExponentialLatency | LognormalLatency,
    Field(discriminator="distribution"),
]


class FaultRates(_Model):
    """Share of calls that fail each way (each in [0, 1], together at most 1)."""

    rate_limit: float = Field(default=0, ge=0, le=1)
    """429 ``rate_limited`` with ``Retry-After``."""
    server_error: float = Field(default=0, ge=0, le=1)
    """500 ``tool_server_error``."""
    unavailable: float = Field(default=0, ge=0, le=1)
    """503 ``tool_unavailable`` with ``Retry-After``."""
    timeout: float = Field(default=0, ge=0, le=1)
    """504 ``tool_timeout``, after waiting ``timeout_ms``."""
    malformed: float = Field(default=0, ge=0, le=1)
    """200 with a body that is not JSON."""
    truncated: float = Field(default=0, ge=0, le=1)
    """200 with the observation cut short (no longer JSON)."""
    empty: float = Field(default=0, ge=0, le=1)
    """200 with an empty result (empty arrays and strings)."""

    @model_validator(mode="after")
    def _at_most_one(self) -> Self:
        total = sum(self.model_dump().values())
        if total > 1 + 1e-9:
            raise ValueError(f"fault rates add up to {total:g}; together they must be at most 1")
        return self


class FaultPolicy(_Model):
    """Seeded fault injection for a toolset or an episode (the episode's wins)."""

    seed: Seed | None = None
    """Seed of the fault draws; default the call's seed (the episode's, the request's)."""
    latency_ms: Latency | None = None
    """Delay added to every call, drawn from this distribution."""
    rates: FaultRates = Field(default_factory=FaultRates)
    retry_after_s: int = Field(default=1, ge=0, le=3600)
    """``Retry-After`` of injected 429 and 503 answers."""
    timeout_ms: float = Field(default=5000, ge=0, le=MAX_DELAY_MS)
    """How long an injected timeout keeps the caller waiting before the 504."""
    tools: list[str] | None = None
    """Only these tools are faulted (default: all)."""


class ToolCallsRequest(_Model):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {"required": ["tools"], "not": {"required": ["toolset_id"]}},
                {
                    "required": ["toolset_id"],
                    "not": {"anyOf": [{"required": ["tools"]}, *map(_required, INLINE_ONLY)]},
                },
            ]
        },
    )

    tools: Tools | None = None
    """OpenAI tool definitions, inline. Give either this or ``toolset_id``."""
    toolset_id: str | None = None
    """A toolset registered with ``POST /v1/toolsets``."""
    output_schemas: OutputSchemas | None = None
    """Output schema per tool name (inline tools only)."""
    stateful: Stateful | None = None
    """Tools whose observations depend on the episode history (inline tools only)."""
    modes: Modes | None = None
    """``simulated`` (default), ``live`` or ``record`` per tool (inline tools only)."""
    live_endpoints: LiveEndpoints | None = None
    """Real HTTP endpoint per ``live``/``record`` tool that is not a utility tool."""
    retrieval: Retrieval | None = None
    """Tools whose grounded observations carry evidence (inline tools only; default: judged
    from the tool's name and parameters)."""
    faults: FaultPolicy | None = None
    """Fault injection for these tools (inline tools only)."""
    infer_output_schemas: bool | None = None
    """Infer an output schema for each inline tool without one (default true; false: the
    fallback ``{"result"}`` schema). Inferred once per tool, then remembered."""
    tool_calls: list[ToolCall] = Field(min_length=1, max_length=128)
    episode_id: str | None = None
    seed: Seed | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.tools is None) == (self.toolset_id is None):
            raise ValueError("give exactly one of 'tools' and 'toolset_id'")
        inline_only = (getattr(self, name) for name in INLINE_ONLY)
        if self.toolset_id is not None and any(v is not None for v in inline_only):
            raise ValueError(
                "'output_schemas', 'stateful', 'modes', 'live_endpoints', 'retrieval', "
                "'faults' and 'infer_output_schemas' go with inline 'tools' only (register a "
                "toolset to name them once)"
            )
        return self


class ToolMessage(BaseModel):
    role: Literal["tool"] = "tool"
    tool_call_id: str
    content: str


class CheckFailure(BaseModel):
    reason: str
    """The first failing check of the gate (``answer_absent``, ``conflicting_answer``, ...)."""


class ObservationInfo(BaseModel):
    tool_call_id: str
    source: Source
    """``fault``: an injected malformed or empty body, made without the simulator."""
    latency_ms: float
    flags: list[str] | None = None
    """Gates the observation failed after every attempt (``fidelity``, ``quality``): the
    simulator's failure, not the tool's. Absent when it passed."""
    fidelity: CheckFailure | None = None
    """Present with ``flags`` containing ``fidelity``: why the observation disagrees with the
    grounding."""
    quality: CheckFailure | None = None
    """Present with ``flags`` containing ``quality``."""
    fault: str | None = None
    """The injected fault this body carries (``malformed``, ``truncated``, ``empty``)."""


class ToolCallsResponse(BaseModel):
    messages: list[ToolMessage]
    observations: list[ObservationInfo]


class ToolsetCreate(_Model):
    tools: Tools = Field(min_length=1)
    output_schemas: OutputSchemas | None = None
    stateful: Stateful | None = None
    modes: Modes | None = None
    live_endpoints: LiveEndpoints | None = None
    retrieval: Retrieval | None = None
    """Tools whose grounded observations carry evidence (True) or never do (False)."""
    faults: FaultPolicy | None = None
    """Fault injection for every call of this toolset (an episode's policy replaces it)."""
    infer_output_schemas: bool = True
    """Infer an output schema for each simulated tool without one, stored with the toolset
    (listed in ``inferred_output_schemas``); false: such tools get the fallback schema."""


class ToolsetOut(BaseModel):
    id: str
    tools: list[dict[str, Any]]
    output_schemas: dict[str, JSONSchema]
    stateful: dict[str, bool]
    inferred_output_schemas: list[str] | None = None
    """Tools whose output schema was inferred rather than given (absent: none)."""
    modes: dict[str, ToolMode] | None = None
    """Tools that are not simulated (absent: every tool is)."""
    live_endpoints: dict[str, str] | None = None
    retrieval: dict[str, bool] | None = None
    faults: FaultPolicy | None = None


class Passage(_Model):
    title: str = ""
    text: str


class Grounding(_Model):
    question: str | None = None
    answer: str | None = None
    aliases: list[str] = Field(default_factory=list, max_length=32)
    """Other spellings of the answer: an observation naming any of them carries it."""
    passages: list[Passage] = Field(default_factory=list, max_length=64)
    usefulness: float = Field(default=1.0, ge=0, le=1)
    """Share of evidence-bearing calls whose observation carries the answer; the others get a
    plausible, related observation without it (a curriculum knob: lower is harder)."""


class EpisodeCreate(_Model):
    toolset_id: str
    seed: Seed | None = None
    grounding: Grounding | None = None
    faults: FaultPolicy | None = None
    """Fault injection for this episode's calls (replaces the toolset's policy)."""


class EpisodeOut(BaseModel):
    episode_id: str
    toolset_id: str
    seed: int


class EpisodeEvent(BaseModel):
    tool: str
    arguments: dict[str, Any]
    observation: str
    fault: str | None = None
    """The injected fault this call got, if one was."""


class EpisodeDetail(EpisodeOut):
    grounded: bool
    events: list[EpisodeEvent]
    """The calls answered in this episode, oldest first."""
