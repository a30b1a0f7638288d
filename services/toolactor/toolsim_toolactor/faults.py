"""Injected faults: what real tools do to agents, on purpose and reproducibly.

A toolset or an episode may carry a ``FaultPolicy`` (the episode's replaces the toolset's):
an added latency drawn from a distribution, and per-kind rates of failures. Every draw is a
function of the policy seed (default: the call's seed), the tool, the arguments and the
call's *occurrence* (how many times the same call came before in the episode, or in this
process without one), so a retry draws anew while a replayed episode fails the same way.

The kinds, and what the agent sees on every face (``/v1/tool_calls``, REST, MCP):

    rate_limit    429 rate_limited (Retry-After)      HTTP faults: the request fails as a
    server_error  500 tool_server_error               whole, before anything is generated;
    unavailable   503 tool_unavailable (Retry-After)  MCP answers a tool error with the
    timeout       504 tool_timeout, after timeout_ms  same code and message
    malformed     200, a body that is not JSON        body faults: the observation is
    truncated     200, the observation cut short      replaced after the cache, so a faulted
    empty         200, an empty result                body is never stored

Injected HTTP faults carry ``X-Toolsim-Fault: <kind>`` so a harness can tell them from the
service's own failures. Faults are counted per kind in ``toolsim_faults_total``.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, ClassVar, NoReturn

import orjson

from toolsim.errors import ToolsimError
from toolsim.jsonutil import digest
from toolsim.toolsets import Tool, Toolset
from toolsim_toolactor.metrics import ActorMetrics
from toolsim_toolactor.protocol import (
    ConstantLatency,
    ExponentialLatency,
    FaultPolicy,
    Latency,
    LognormalLatency,
    UniformLatency,
)
from toolsim_toolactor.seeded import unit_draw

HTTP_FAULTS = ("rate_limit", "server_error", "unavailable", "timeout")
BODY_FAULTS = ("malformed", "truncated", "empty")
FAULT_KINDS = HTTP_FAULTS + BODY_FAULTS
MALFORMED_BODY = (
    b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"
    b"</h1></center><hr><center>nginx</center></body></html>"
)
"""What a proxy in front of a real API answers when the API behind it fell over."""
_STANDARD_NORMAL = NormalDist()
POLICY_MEMO_SIZE = 1024
OCCURRENCES_SIZE = 65_536


class InjectedFault(ToolsimError):
    """Base of the failures a fault policy injects (never the service's own)."""

    kind: ClassVar[str] = ""
    error_type = "tool_error"

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        headers = {"X-Toolsim-Fault": self.kind}
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers


class RateLimitedError(InjectedFault):
    status_code = 429
    code = "rate_limited"
    kind = "rate_limit"


class ToolServerError(InjectedFault):
    status_code = 500
    code = "tool_server_error"
    kind = "server_error"


class ToolUnavailableError(InjectedFault):
    status_code = 503
    code = "tool_unavailable"
    kind = "unavailable"


class ToolTimeoutError(InjectedFault):
    status_code = 504
    code = "tool_timeout"
    kind = "timeout"


@dataclass(frozen=True)
class FaultDraw:
    """What the policy does to one call: a fault kind (or None) and an added delay."""

    kind: str | None
    delay_s: float
    cut: float = 0.0
    """Where a truncated body is cut, as a share of its length."""


NO_FAULT = FaultDraw(None, 0.0)


class FaultInjector:
    """The service's fault state: compiled toolset policies, occurrence counts outside
    episodes, and the metrics every injected fault and delay is counted in."""

    def __init__(self, metrics: ActorMetrics) -> None:
        self._metrics = metrics
        self._policies: OrderedDict[str, FaultPolicy] = OrderedDict()
        self._occurrences: OrderedDict[str, int] = OrderedDict()

    def policy(self, toolset: Toolset, episode_policy: FaultPolicy | None) -> FaultPolicy | None:
        """The episode's policy, else the toolset's, else None (no faults)."""
        if episode_policy is not None or toolset.faults is None:
            return episode_policy
        policy = self._policies.get(toolset.id)
        if policy is None:
            policy = FaultPolicy.model_validate(toolset.faults)
            self._policies[toolset.id] = policy
            _bounded(self._policies, POLICY_MEMO_SIZE)
        return policy

    def draws(
        self,
        policy: FaultPolicy,
        calls: Sequence[tuple[Tool, dict[str, Any]]],
        history: Sequence[dict[str, Any]] | None,
        seed: int,
    ) -> list[FaultDraw]:
        """One draw per call. A call's occurrence counts the identical calls before it: in the
        episode ``history`` (faulted ones included), else in this process; and earlier in
        ``calls``."""
        out = []
        for i, (tool, args) in enumerate(calls):
            earlier = sum(1 for t, a in calls[:i] if t is tool and a == args)
            if history is not None:
                seen = sum(1 for e in history if e["tool"] == tool.name and e["arguments"] == args)
            else:
                seen = self._seen(policy, seed, tool, args)
            out.append(draw(policy, seed, tool, args, seen + earlier))
        return out

    def _seen(self, policy: FaultPolicy, seed: int, tool: Tool, args: dict[str, Any]) -> int:
        key = digest((policy.seed if policy.seed is not None else seed, tool.name, args))
        seen = self._occurrences.get(key, 0)
        self._occurrences[key] = seen + 1
        self._occurrences.move_to_end(key)
        _bounded(self._occurrences, OCCURRENCES_SIZE)
        return seen

    def injected(self, kind: str) -> None:
        self._metrics.faults.labels(kind).inc()

    async def delay(self, seconds: float) -> None:
        if seconds > 0:
            self._metrics.fault_delay.inc(seconds)
            await asyncio.sleep(seconds)

    async def fail(self, error: InjectedFault, policy: FaultPolicy, delay_s: float) -> NoReturn:
        """Wait as the fault would (a timeout waits ``timeout_ms`` more), then raise it."""
        self.injected(error.kind)
        if error.kind == "timeout":
            delay_s += policy.timeout_ms / 1000
        await self.delay(delay_s)
        raise error


def _bounded(mapping: OrderedDict[str, Any], size: int) -> None:
    while len(mapping) > size:
        mapping.popitem(last=False)


def draw(
    policy: FaultPolicy, seed: int, tool: Tool, arguments: dict[str, Any], occurrence: int
) -> FaultDraw:
    """The fault and delay of the ``occurrence``-th identical call (0 = the first)."""
    if policy.tools is not None and tool.name not in policy.tools:
        return NO_FAULT
    base = (policy.seed if policy.seed is not None else seed, tool.name, arguments, occurrence)
    delay = 0.0
    if policy.latency_ms is not None:
        delay = latency_ms(policy.latency_ms, unit_draw("latency", *base)) / 1000
    return FaultDraw(_kind(policy, unit_draw("fault", *base)), delay, unit_draw("cut", *base))


def _kind(policy: FaultPolicy, u: float) -> str | None:
    """Inverse CDF over the kinds: each owns a slice of [0, 1) as wide as its rate."""
    edge = 0.0
    for kind, rate in policy.rates.model_dump().items():
        edge += rate
        if u < edge:
            return str(kind)
    return None


def latency_ms(spec: Latency, u: float) -> float:
    """The delay at quantile ``u`` of the distribution."""
    if isinstance(spec, ConstantLatency):
        return spec.ms
    if isinstance(spec, UniformLatency):
        return spec.low_ms + u * (spec.high_ms - spec.low_ms)
    if isinstance(spec, ExponentialLatency):
        return -spec.mean_ms * math.log1p(-u)
    assert isinstance(spec, LognormalLatency)
    z = _STANDARD_NORMAL.inv_cdf(min(max(u, 1e-12), 1 - 1e-12))
    return spec.median_ms * math.exp(spec.sigma * z)


def http_error(kind: str, policy: FaultPolicy, tool: Tool) -> InjectedFault:
    """The error an HTTP fault answers with (messages as a real API would word them)."""
    retry = policy.retry_after_s
    if kind == "rate_limit":
        return RateLimitedError(
            f"rate limit exceeded for tool {tool.name!r}; retry after {retry} s",
            retry_after_s=retry,
        )
    if kind == "server_error":
        return ToolServerError(f"tool {tool.name!r} failed with an internal error")
    if kind == "unavailable":
        return ToolUnavailableError(
            f"tool {tool.name!r} is temporarily unavailable; retry after {retry} s",
            retry_after_s=retry,
        )
    if kind == "timeout":
        return ToolTimeoutError(
            f"tool {tool.name!r} did not answer within {policy.timeout_ms / 1000:g} s"
        )
    raise ValueError(f"{kind!r} is not an HTTP fault")


def faulted_body(kind: str, tool: Tool, content: bytes | None, u: float) -> bytes:
    """The body of a body fault; ``truncated`` cuts ``content`` at a point drawn from ``u``."""
    if kind == "malformed":
        return MALFORMED_BODY
    if kind == "empty":
        return orjson.dumps(empty_instance(tool.output_schema))
    if kind == "truncated":
        assert content is not None, "a truncated body needs the observation"
        # Keep at least one byte and drop at least one: the result is never valid JSON.
        cut = content[: 1 + int(u * max(1, len(content) - 2))]
        return cut.decode("utf-8", "ignore").encode()  # never half a character
    raise ValueError(f"{kind!r} is not a body fault")


def empty_instance(schema: dict[str, Any]) -> Any:
    """The emptiest value the schema's shape allows: no items, no text, zero, false."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    types = schema.get("type", "object")
    kinds = types if isinstance(types, list) else [types]
    if "null" in kinds and len(kinds) > 1:
        kinds = [k for k in kinds if k != "null"]
    kind = kinds[0]
    if kind == "object":
        properties = schema.get("properties", {})
        names = schema.get("required", list(properties))
        return {k: empty_instance(properties.get(k, {"type": "null"})) for k in names}
    if kind == "array":
        return []
    if kind == "string":
        return ""
    if kind in ("integer", "number"):
        return 0
    if kind == "boolean":
        return False
    return None
