"""Turn one tool call into a valid observation with the LLM, or fail clearly.

A generation that ends by length, is not JSON, or breaks the output schema is retried with
a new seed, up to ``max_attempts`` generations; then ``GenerationFailedError``. A
schema-valid generation then meets the call's gates (``checks.py``: ``fidelity`` for an
evidence call of a grounded episode, the gates the simulator is built with, ``quality``, for
every other call): one that
fails is retried the same way, and when the attempts run out the last schema-valid one is
returned with a ``Verdict`` naming the gates it fails. What this returns has always passed
the output schema; the caller caches it by its verdict.

An evidence call decodes under ``evidence.schema`` (copied excerpts fixed, bounds tightened)
and is validated against the tool's own schema, which every instance of it satisfies. When
that schema fixes the whole observation (``fixed_instance``: every value a ``const``), the
backend is not called: the observation is built from the schema, the bytes the constrained
decoder would write (properties in schema order, re-serialised by ``orjson`` as every
generation is), in a millisecond instead of seconds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson

from toolsim.errors import BackendUnavailableError, GenerationFailedError
from toolsim.llm.base import GenerationRequest, LLMBackend
from toolsim.toolsets import Tool
from toolsim_toolactor.checks import PASSED, Gate, Verdict, check_input, judge
from toolsim_toolactor.fidelity import Evidence
from toolsim_toolactor.metrics import ActorMetrics
from toolsim_toolactor.prompt import EpisodeContext, build_messages

SEED_STRIDE = 1_000_003  # attempt k uses seed + k * stride: distinct, reproducible


@dataclass(frozen=True)
class Simulated:
    """A schema-valid observation and the gates it fails (none: it passed)."""

    content: bytes
    verdict: Verdict = PASSED


class Simulator:
    def __init__(
        self,
        backend: LLMBackend,
        metrics: ActorMetrics,
        *,
        temperature: float,
        max_tokens: int,
        presence_penalty: float = 0.0,
        max_attempts: int,
        timeout_s: float,
        max_concurrent: int,
        gates: tuple[Gate, ...] = (),
    ) -> None:
        self._backend = backend
        self._metrics = metrics
        self._temperature = temperature
        self._presence_penalty = presence_penalty
        self._max_tokens = max_tokens
        self._max_attempts = max_attempts
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_concurrent)
        self._gates = gates
        """Gates every call without evidence meets (``quality``)."""
        self.sampling = (temperature, presence_penalty, max_tokens)
        """The sampling settings an observation depends on: part of every cache key, so a
        service restarted with another temperature, presence penalty or token cap does not
        replay what the old settings generated."""

    async def simulate(
        self,
        tool: Tool,
        arguments: dict[str, Any],
        episode: EpisodeContext | None,
        seed: int,
        evidence: Evidence | None = None,
    ) -> Simulated:
        gates = self.gates_for(evidence)
        schema = evidence.schema if evidence is not None else tool.output_schema
        fixed = fixed_instance(schema)
        if fixed is not None:
            return self._from_schema(gates, tool, arguments, fixed[0])
        messages = build_messages(tool, arguments, episode, evidence)
        reasons: list[str] = []
        last: Simulated | None = None
        for attempt in range(self._max_attempts):
            if attempt:
                self._metrics.retries.labels(reasons[-1]).inc()
            request = GenerationRequest(
                messages=messages,
                json_schema=schema,
                seed=(seed + attempt * SEED_STRIDE) % 2**31,
                temperature=self._temperature,
                max_tokens=self._max_tokens,
                # an evidence call keeps the decoding the fidelity bench measured
                presence_penalty=self._presence_penalty if evidence is None else 0.0,
            )
            text, finish = await self._generate(request)
            value, reason = self._parse(tool, text, finish)
            if value is _INVALID:
                reasons.append(reason)
                continue
            verdict = self._judge(gates, tool, arguments, value)
            last = Simulated(orjson.dumps(value), verdict)
            if verdict.passed:
                return last
            reasons.append(verdict.flags[0])
        if last is not None:  # schema-valid, but it fails a gate: returned flagged
            self._count_flagged(last.verdict)
            return last
        raise GenerationFailedError(
            f"no valid observation for tool {tool.name!r} after {self._max_attempts} "
            f"generations ({', '.join(reasons)})"
        )

    def _from_schema(
        self, gates: tuple[Gate, ...], tool: Tool, arguments: dict[str, Any], value: Any
    ) -> Simulated:
        """The one observation the schema allows. Every attempt would decode these same bytes,
        so a gate it fails flags it at once and a schema it breaks fails the call at once."""
        if not tool.output_validator.is_valid(value):
            self._metrics.schema_violations.inc()
            raise GenerationFailedError(
                f"the decoding schema of tool {tool.name!r} fixes an observation that breaks "
                "its output schema"
            )
        self._metrics.fixed_observations.inc()
        result = Simulated(orjson.dumps(value), self._judge(gates, tool, arguments, value))
        if not result.verdict.passed:
            self._count_flagged(result.verdict)
        return result

    def gates_for(self, evidence: Evidence | None) -> tuple[Gate, ...]:
        """An evidence call meets its ``fidelity`` gate instead of the simulator's: its text is
        the grounding's own excerpts, real prose the plausibility rules are not written for
        (it repeats names, and an uninformative excerpt need not restate the query)."""
        return self._gates if evidence is None else (evidence.gate,)

    def _judge(
        self, gates: tuple[Gate, ...], tool: Tool, arguments: dict[str, Any], value: Any
    ) -> Verdict:
        if not gates:
            return PASSED
        verdict = judge(gates, check_input(tool, arguments, value))
        for flag, reason in verdict.failures.items():
            self._metrics.check_failures.labels(flag, reason).inc()
        return verdict

    def _count_flagged(self, verdict: Verdict) -> None:
        for flag in verdict.flags:
            self._metrics.flagged_observations.labels(flag).inc()

    async def _generate(self, request: GenerationRequest) -> tuple[str, str]:
        started = time.perf_counter()
        try:
            async with self._slots, asyncio.timeout(self._timeout_s):
                generation = await self._backend.generate(request)
        except TimeoutError as exc:
            self._metrics.backend_errors.labels("timeout").inc()
            raise BackendUnavailableError(
                f"the LLM backend did not answer within {self._timeout_s:g} s"
            ) from exc
        except BackendUnavailableError:
            self._metrics.backend_errors.labels("unavailable").inc()
            raise
        self._metrics.generation_latency.observe(time.perf_counter() - started)
        self._metrics.prompt_tokens.inc(generation.prompt_tokens)
        self._metrics.completion_tokens.inc(generation.completion_tokens)
        return generation.text, generation.finish_reason

    def _parse(self, tool: Tool, text: str, finish: str) -> tuple[Any, str]:
        """(value, "") for a schema-valid generation, else (``_INVALID``, the reason)."""
        if finish == "length":
            return _INVALID, "length"
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            self._metrics.schema_violations.inc()
            return _INVALID, "invalid_json"
        if not tool.output_validator.is_valid(value):
            self._metrics.schema_violations.inc()
            return _INVALID, "schema"
        return value, ""


class _Invalid:
    """Marks "no value" (``None`` is a JSON value, so it cannot)."""


_INVALID: Any = _Invalid()

_FIXED_OBJECT_KEYS = frozenset({"type", "properties", "required", "additionalProperties"})
_FIXED_ARRAY_KEYS = frozenset({"type", "prefixItems", "items", "minItems", "maxItems"})
_ANNOTATIONS = frozenset({"description", "title", "$comment", "examples", "default", "$schema"})


def fixed_instance(schema: dict[str, Any]) -> tuple[Any] | None:
    """``(value,)``, the one instance ``schema`` admits when nothing in it is left to choose
    (every leaf a ``const``, every object closed with every property required, every array
    exactly its ``prefixItems``), else None. Keys come in schema order, the order a
    constrained decoder writes them; any other keyword (``anyOf``, ``$ref``, ...) counts as
    a choice."""
    value = _fixed_value(schema)
    return None if value is _INVALID else (value,)


def _fixed_value(node: Any) -> Any:
    if not isinstance(node, dict):
        return _INVALID
    if "const" in node:
        return node["const"]
    keys = set(node) - _ANNOTATIONS
    if node.get("type") == "object" and keys <= _FIXED_OBJECT_KEYS:
        return _fixed_object(node)
    if node.get("type") == "array" and keys <= _FIXED_ARRAY_KEYS:
        return _fixed_array(node)
    return _INVALID


def _fixed_object(node: dict[str, Any]) -> Any:
    properties: dict[str, Any] = node.get("properties", {})
    closed = node.get("additionalProperties") is False
    if not closed or not set(properties) <= set(node.get("required", [])):
        return _INVALID  # the decoder may add or leave out a key
    values = {name: _fixed_value(sub) for name, sub in properties.items()}
    return _INVALID if any(v is _INVALID for v in values.values()) else values


def _fixed_array(node: dict[str, Any]) -> Any:
    items: list[Any] = node.get("prefixItems", [])
    count = len(items)
    exact = node.get("minItems", 0) == count <= node.get("maxItems", count)
    if node.get("items") is not False or not exact:
        return _INVALID  # the decoder may choose the length
    values = [_fixed_value(item) for item in items]
    return _INVALID if any(v is _INVALID for v in values) else values
