"""The ToolActor's logic: resolve the toolset, validate, look up, coalesce, simulate.

One observation's life: arguments are validated against the tool's ``parameters``; a fault
policy may answer first (``faults.py``); in a grounded episode an evidence call gets its role
(``fidelity.py``); the cache key is a digest of everything that determines the observation;
a hit is returned as stored; a miss joins an identical in-flight generation or starts one.
An observation that passed every gate is written under its key; one returned flagged is
written under ``flagged_key(key)``, which only the flagged path reads, so it is replayed
flagged and never served as a pass. Nothing here knows which cache or backend it holds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from toolsim.errors import (
    EpisodeNotFoundError,
    InvalidRequestError,
    ToolNotFoundError,
    ToolsetNotFoundError,
)
from toolsim.jsonutil import digest, dumps
from toolsim.registry import Registry
from toolsim.schema_inference import OutputSchemaInferrer
from toolsim.singleflight import SingleFlight
from toolsim.toolsets import Tool, Toolset, build_toolset, toolset_from_record
from toolsim_toolactor import faults
from toolsim_toolactor.cache import ObservationCache
from toolsim_toolactor.checks import PASSED, Verdict
from toolsim_toolactor.faults import NO_FAULT, FaultDraw
from toolsim_toolactor.fidelity import Evidence, Role, evidence_role, facts_of, plan_evidence
from toolsim_toolactor.live import LiveExecutor
from toolsim_toolactor.metrics import ActorMetrics
from toolsim_toolactor.prompt import PROMPT_VERSION, EpisodeContext
from toolsim_toolactor.protocol import EpisodeCreate, FaultPolicy, Source, ToolCallsRequest
from toolsim_toolactor.quality import QUALITY_VERSION
from toolsim_toolactor.simulator import Simulated, Simulator

RECORD_VERSION = "rec1"
TOOLSET_LRU_SIZE = 1024
ARGUMENTS_MEMO_SIZE = 8192
CLAIM_POLL_FIRST_S = 0.01
CLAIM_POLL_MAX_S = 0.2
"""Polling of a replica waiting on another one's generation: 10 ms, doubling up to 200 ms."""


@dataclass(frozen=True)
class Observation:
    content: bytes
    """The observation as compact JSON (not JSON when a body fault was injected)."""
    source: Source
    latency_ms: float
    verdict: Verdict = PASSED
    """The gates it failed after every attempt (none: it passed)."""
    fault: str | None = None
    """The body fault injected into ``content``, if any."""
    replayable: bool = False
    """A cache hit outside any episode, on a toolset without a fault policy: the same call
    would get the same observation again, so its whole response may be kept (``replay.py``)."""


@dataclass(frozen=True)
class Episode:
    id: str
    toolset_id: str
    seed: int
    grounding: dict[str, Any] | None
    grounding_digest: str | None
    faults: FaultPolicy | None = None


@dataclass(frozen=True)
class _Call:
    """One validated call on its way through ``_observe``."""

    tool: Tool
    arguments: dict[str, Any]
    fault: FaultDraw = NO_FAULT


class ToolActorService:
    def __init__(
        self,
        *,
        registry: Registry,
        cache: ObservationCache,
        simulator: Simulator,
        inferrer: OutputSchemaInferrer,
        live: LiveExecutor,
        metrics: ActorMetrics,
        model_name: str,
        default_seed: int,
        history_events: int,
    ) -> None:
        self._registry = registry
        self._cache = cache
        self._simulator = simulator
        self._inferrer = inferrer
        self._live = live
        self._metrics = metrics
        self._model_name = model_name
        self._default_seed = default_seed
        self._history_events = history_events
        self._toolsets: OrderedDict[str, Toolset] = OrderedDict()
        self._inline_ids: OrderedDict[bytes, str] = OrderedDict()
        self._flights: SingleFlight[Simulated] = SingleFlight()
        self._valid_arguments: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._faults = faults.FaultInjector(metrics)

    # -- toolsets ---------------------------------------------------------------------------

    async def register_toolset(
        self,
        tools: list[dict[str, Any]],
        output_schemas: dict[str, Any] | None,
        stateful: dict[str, bool] | None,
        modes: dict[str, str] | None = None,
        live_endpoints: dict[str, str] | None = None,
        retrieval: dict[str, bool] | None = None,
        fault_policy: FaultPolicy | None = None,
        infer_output_schemas: bool = True,
    ) -> Toolset:
        toolset = await self._build(
            infer_output_schemas,
            tools,
            output_schemas,
            stateful,
            modes,
            live_endpoints,
            retrieval,
            _dump(fault_policy),
        )
        _check_fault_tools(toolset, fault_policy, "faults.tools")
        self._live.check(toolset)
        await self._registry.put_toolset(toolset.to_record())
        self._remember(toolset)
        return toolset

    async def get_toolset(self, toolset_id: str) -> Toolset:
        toolset = self._toolsets.get(toolset_id)
        if toolset is not None:
            return toolset
        record = await self._registry.get_toolset(toolset_id)
        if record is None:
            raise ToolsetNotFoundError(f"no toolset {toolset_id!r}", param="toolset_id")
        toolset = toolset_from_record(record)
        self._remember(toolset)
        return toolset

    async def inline_toolset(self, request: ToolCallsRequest) -> Toolset:
        """Validate inline tools once; later requests with the same tools reuse the result.
        A tool without an output schema gets an inferred one, itself remembered by the tool's
        definition (so the same tool in another inline set is not inferred again)."""
        # The memo key is the raw JSON, unsorted: cheaper than a canonical digest, and a
        # differently ordered copy only costs one more validation, not a wrong answer.
        key = dumps(
            (
                request.tools,
                request.output_schemas,
                request.stateful,
                request.modes,
                request.live_endpoints,
                request.retrieval,
                _dump(request.faults),
                request.infer_output_schemas,
            )
        )
        toolset_id = self._inline_ids.get(key)
        if toolset_id is not None and toolset_id in self._toolsets:
            return self._toolsets[toolset_id]
        toolset = await self._build(
            request.infer_output_schemas is not False,
            request.tools or [],
            request.output_schemas,
            request.stateful,
            request.modes,
            request.live_endpoints,
            request.retrieval,
            _dump(request.faults),
        )
        _check_fault_tools(toolset, request.faults, "faults.tools")
        self._live.check(toolset)
        self._remember(toolset)
        self._inline_ids[key] = toolset.id
        _trim(self._inline_ids)
        return toolset

    async def _build(
        self,
        infer: bool,
        tools: list[dict[str, Any]],
        output_schemas: dict[str, Any] | None,
        stateful: dict[str, bool] | None,
        modes: Mapping[str, str] | None,
        live_endpoints: dict[str, str] | None,
        retrieval: dict[str, bool] | None,
        fault_policy: dict[str, Any] | None,
    ) -> Toolset:
        """Validate (a bad definition costs no generation), then infer the missing output
        schemas of simulated tools and build the toolset that carries them."""
        args = (stateful, modes, live_endpoints, retrieval, fault_policy)
        toolset = build_toolset(tools, output_schemas, *args)
        if not infer:
            return toolset
        schemas = await self._inferrer.complete(tools, output_schemas, skip=_not_simulated(modes))
        if not schemas.inferred:
            return toolset
        return build_toolset(tools, schemas.output_schemas, *args, schemas.inferred)

    def _remember(self, toolset: Toolset) -> None:
        self._toolsets[toolset.id] = toolset
        self._toolsets.move_to_end(toolset.id)
        _trim(self._toolsets)

    # -- episodes ---------------------------------------------------------------------------

    async def create_episode(self, body: EpisodeCreate) -> Episode:
        toolset = await self.get_toolset(body.toolset_id)  # 404 before anything is stored
        _check_fault_tools(toolset, body.faults, "faults.tools")
        grounding = body.grounding.model_dump() if body.grounding is not None else None
        meta: dict[str, Any] = {
            "toolset_id": body.toolset_id,
            "seed": body.seed if body.seed is not None else secrets.randbits(31),
            "grounding": grounding,
            "grounding_digest": _grounding_digest(grounding),
            "faults": _dump(body.faults),
        }
        episode_id = "ep_" + secrets.token_hex(12)
        await self._registry.create_episode(episode_id, meta)
        return _episode(episode_id, meta)

    async def get_episode(self, episode_id: str, *, param: str = "episode_id") -> Episode:
        meta = await self._registry.get_episode(episode_id)
        if meta is None:
            raise EpisodeNotFoundError(f"no episode {episode_id!r} (or it expired)", param=param)
        return _episode(episode_id, meta)

    # -- calls ------------------------------------------------------------------------------

    async def tool_calls(self, request: ToolCallsRequest) -> list[Observation]:
        if request.toolset_id is not None:
            toolset = await self.get_toolset(request.toolset_id)
        else:
            toolset = await self.inline_toolset(request)
        calls = [
            (
                _tool(toolset, call.function.name, f"tool_calls[{i}].function.name"),
                call.function.arguments,
                f"tool_calls[{i}].function.arguments.",
            )
            for i, call in enumerate(request.tool_calls)
        ]
        parsed = [(tool, self._arguments(tool, args, p)) for tool, args, p in calls]
        return await self._observe(toolset, parsed, request.episode_id, request.seed)

    def _arguments(self, tool: Tool, arguments: str, param_prefix: str) -> dict[str, Any]:
        """Parse and validate, remembering valid results: a repeated call (the cache-hit
        path) skips JSON Schema validation. The parsed dicts are never mutated."""
        memo_key = (tool.digest, arguments)
        parsed = self._valid_arguments.get(memo_key)
        if parsed is None:
            parsed = tool.parse_arguments(arguments, param_prefix=param_prefix)
            self._valid_arguments[memo_key] = parsed
            if len(self._valid_arguments) > ARGUMENTS_MEMO_SIZE:
                self._valid_arguments.popitem(last=False)
        return parsed

    async def call_tool(
        self,
        toolset_id: str,
        name: str,
        arguments: Any,
        episode_id: str | None,
        seed: int | None,
    ) -> Observation:
        toolset = await self.get_toolset(toolset_id)
        tool = _tool(toolset, name, "name")
        args = tool.check_arguments(arguments)
        (observation,) = await self._observe(toolset, [(tool, args)], episode_id, seed)
        return observation

    async def _observe(
        self,
        toolset: Toolset,
        calls: list[tuple[Tool, dict[str, Any]]],
        episode_id: str | None,
        seed: int | None,
    ) -> list[Observation]:
        episode, history = await self._episode_history(toolset, episode_id)
        context = self._context(episode, history) if episode is not None else None
        if seed is None:
            seed = episode.seed if episode is not None else self._default_seed
        planned = await self._faults_first(toolset, episode, history, calls, seed)
        # a fault policy draws per call (and may delay): only a plain call may be replayed
        plain = episode is None and toolset.faults is None
        history_digest = digest(context.history) if context is not None else None
        if len(planned) == 1:  # the common case: no task or gather on the hot path
            observations = [await self._call(planned[0], episode, context, seed, history_digest)]
        else:
            observations = list(
                await asyncio.gather(
                    *(self._call(c, episode, context, seed, history_digest) for c in planned)
                )
            )
        if not plain:
            observations = [
                dataclasses.replace(o, replayable=False) if o.replayable else o
                for o in observations
            ]
        if episode is not None:
            events = [
                _event(c.tool, c.arguments, obs.content.decode(), obs.fault)
                for c, obs in zip(planned, observations, strict=True)
            ]
            await self._registry.append_events(episode.id, events)
        return observations

    async def _episode_history(
        self, toolset: Toolset, episode_id: str | None
    ) -> tuple[Episode | None, list[dict[str, Any]]]:
        if episode_id is None:
            return None, []
        episode = await self.get_episode(episode_id)
        if episode.toolset_id != toolset.id:
            raise InvalidRequestError(
                f"episode {episode_id!r} belongs to toolset {episode.toolset_id!r}, "
                f"not {toolset.id!r}",
                param="episode_id",
            )
        # read only what is used: the simulator's recent calls, or, when a fault policy
        # counts earlier occurrences of a call, every kept event
        faulty = self._faults.policy(toolset, episode.faults) is not None
        last = None if faulty else self._history_events
        return episode, await self._registry.episode_events(episode_id, last=last)

    def _context(self, episode: Episode, history: list[dict[str, Any]]) -> EpisodeContext:
        """What the simulator sees: the facts and the recent calls that were answered (an
        injected fault says nothing about the tool's world, so it is not shown)."""
        answered = [e for e in history if "fault" not in e]
        recent = answered[-self._history_events :] if self._history_events else []
        return EpisodeContext(episode.id, episode.grounding, recent, episode.grounding_digest)

    async def _faults_first(
        self,
        toolset: Toolset,
        episode: Episode | None,
        history: list[dict[str, Any]],
        calls: list[tuple[Tool, dict[str, Any]]],
        seed: int,
    ) -> list[_Call]:
        """Draw each call's fault; an HTTP fault answers the whole request before anything
        is generated (recorded in the episode, so a retry draws its next occurrence)."""
        policy = self._faults.policy(toolset, episode.faults if episode is not None else None)
        if policy is None:
            return [_Call(tool, args) for tool, args in calls]
        draws = self._faults.draws(policy, calls, history if episode is not None else None, seed)
        planned = [_Call(t, a, d) for (t, a), d in zip(calls, draws, strict=True)]
        failing = next((c for c in planned if c.fault.kind in faults.HTTP_FAULTS), None)
        if failing is None:
            return planned
        assert failing.fault.kind is not None
        error = faults.http_error(failing.fault.kind, policy, failing.tool)
        if episode is not None:
            body = dumps(error.to_envelope()).decode()
            event = _event(failing.tool, failing.arguments, body, error.kind)
            await self._registry.append_events(episode.id, [event])
        await self._faults.fail(error, policy, max(c.fault.delay_s for c in planned))

    # -- one call ---------------------------------------------------------------------------

    async def _call(
        self,
        call: _Call,
        episode: Episode | None,
        context: EpisodeContext | None,
        seed: int,
        history_digest: str | None,
    ) -> Observation:
        """One call with its fault applied: a body fault replaces the body after the cache."""
        kind = call.fault.kind
        if kind is None:
            observation = await self._one(
                call.tool, call.arguments, episode, context, seed, history_digest
            )
        else:
            self._faults.injected(kind)
            observation = await self._faulted(call, kind, episode, context, seed, history_digest)
        await self._faults.delay(call.fault.delay_s)
        if call.fault.delay_s:
            latency = observation.latency_ms + call.fault.delay_s * 1000
            observation = dataclasses.replace(observation, latency_ms=latency)
        return observation

    async def _faulted(
        self,
        call: _Call,
        kind: str,
        episode: Episode | None,
        context: EpisodeContext | None,
        seed: int,
        history_digest: str | None,
    ) -> Observation:
        if kind != "truncated":  # malformed and empty bodies need no observation
            body = faults.faulted_body(kind, call.tool, None, call.fault.cut)
            return Observation(body, "fault", 0.0, fault=kind)
        whole = await self._one(call.tool, call.arguments, episode, context, seed, history_digest)
        body = faults.faulted_body(kind, call.tool, whole.content, call.fault.cut)
        return dataclasses.replace(whole, content=body, fault=kind)

    async def _one(
        self,
        tool: Tool,
        arguments: dict[str, Any],
        episode: Episode | None,
        context: EpisodeContext | None,
        seed: int,
        history_digest: str | None,
    ) -> Observation:
        started = time.perf_counter()
        if tool.mode != "simulated":
            content = await self._call_live(tool, arguments)
            return Observation(content, "live", (time.perf_counter() - started) * 1000)
        role = self._role(tool, arguments, context, seed)
        key = digest(
            {
                "v": PROMPT_VERSION,
                "q": QUALITY_VERSION,
                "m": self._model_name,
                "p": self._simulator.sampling,
                "t": tool.digest,
                "a": arguments,
                "g": episode.grounding_digest if episode is not None else None,
                "s": seed,
                "h": history_digest if tool.stateful else None,
                "r": role,
            }
        )
        cached = await self._cache.get(key)
        if cached is not None:
            self._metrics.cache_hits.inc()
            self._metrics.cache_observations.inc()
            elapsed = (time.perf_counter() - started) * 1000
            return Observation(cached, "cache", elapsed, replayable=True)
        self._metrics.cache_misses.inc()
        recorded = await self._cache.get(_recorded_key(tool, arguments))
        if recorded is not None:  # a real observation recorded earlier beats a simulated one
            self._metrics.cache_observations.inc()
            return Observation(recorded, "cache", (time.perf_counter() - started) * 1000)
        evidence = self._plan(tool, context, role)
        if self._simulator.gates_for(evidence):
            flagged = await self._cache.get(flagged_key(key))
            if flagged is not None:
                self._metrics.cache_observations.inc()
                content, verdict = _unwrap_flagged(flagged)
                elapsed = (time.perf_counter() - started) * 1000
                return Observation(content, "cache", elapsed, verdict)
        result, joined = await self._coalesced(key, tool, arguments, context, seed, evidence)
        elapsed = (time.perf_counter() - started) * 1000
        if joined or result.replayed:  # another request generated it: to this caller a replay
            self._metrics.cache_observations.inc()
            return Observation(result.content, "cache", elapsed, result.verdict)
        self._metrics.simulated_observations.inc()
        return Observation(result.content, "simulated", elapsed, result.verdict)

    def _role(
        self, tool: Tool, arguments: dict[str, Any], context: EpisodeContext | None, seed: int
    ) -> Role | None:
        if context is None or not context.grounding or context.grounding_digest is None:
            return None
        facts = facts_of(context.grounding, context.grounding_digest)
        usefulness = float(context.grounding.get("usefulness", 1.0))
        return evidence_role(tool, arguments, facts, usefulness, seed)

    def _plan(
        self, tool: Tool, context: EpisodeContext | None, role: Role | None
    ) -> Evidence | None:
        if role is None or context is None or context.grounding_digest is None:
            return None
        assert context.grounding is not None
        return plan_evidence(tool, facts_of(context.grounding, context.grounding_digest), role)

    async def _coalesced(
        self,
        key: str,
        tool: Tool,
        arguments: dict[str, Any],
        context: EpisodeContext | None,
        seed: int,
        evidence: Evidence | None,
    ) -> tuple[Simulated, bool]:
        """The generation for `key`, and whether this request joined one already in flight."""
        result, joined = await self._flights.run(
            key, lambda: self._generate(key, tool, arguments, context, seed, evidence)
        )
        if joined:
            self._metrics.coalesced.inc()
        return result, joined

    async def _call_live(self, tool: Tool, arguments: dict[str, Any]) -> bytes:
        content = await self._live.call(tool, arguments)
        self._metrics.live_observations.inc()
        if not tool.output_validator.is_valid(orjson.loads(content)):
            # the real tool is the truth: return it, but never record what breaks the schema
            self._metrics.live_schema_mismatches.inc()
        elif tool.mode == "record":
            await self._cache.set(_recorded_key(tool, arguments), content)
        return content

    async def _generate(
        self,
        key: str,
        tool: Tool,
        arguments: dict[str, Any],
        context: EpisodeContext | None,
        seed: int,
        evidence: Evidence | None,
    ) -> Simulated:
        """Generate once across replicas: claim the key, or wait for the replica that has it."""
        gated = bool(self._simulator.gates_for(evidence))
        while (claim := await self._cache.claim(key)) is None:
            stored = await self._await_replica(key, gated)
            if stored is not None:
                self._metrics.coalesced_replicas.inc()
                return stored
            # the claim went away with nothing stored (its generation failed, or its replica
            # died): claim it again and generate here
        try:
            # a replica may have stored it between this request's miss and its claim
            stored = await self._stored(key, gated)
            if stored is not None:
                self._metrics.coalesced_replicas.inc()
                return stored
            result = await self._simulator.simulate(tool, arguments, context, seed, evidence)
            if result.verdict.passed:
                await self._cache.set(key, result.content)
            else:  # replayed flagged, never as a pass
                await self._cache.set(flagged_key(key), _wrap_flagged(result))
            return result
        finally:
            await claim.release()

    async def _stored(self, key: str, gated: bool) -> Simulated | None:
        content = await self._cache.get(key)
        if content is not None:
            return Simulated(content, replayed=True)
        if gated:
            flagged = await self._cache.get(flagged_key(key))
            if flagged is not None:
                content, verdict = _unwrap_flagged(flagged)
                return Simulated(content, verdict, replayed=True)
        return None

    async def _await_replica(self, key: str, gated: bool) -> Simulated | None:
        """Poll for the result of another replica's claim on ``key`` until it is stored (the
        result) or the claim is gone (None)."""
        pause = CLAIM_POLL_FIRST_S
        while True:
            stored = await self._stored(key, gated)
            if stored is not None:
                return stored
            if not await self._cache.claimed(key):
                return await self._stored(key, gated)  # stored just before the release?
            await asyncio.sleep(pause)
            pause = min(pause * 2, CLAIM_POLL_MAX_S)


def flagged_key(key: str) -> str:
    """Where an observation that failed a gate is cached: a key the pass path never reads."""
    return digest({"flagged": key})


def _wrap_flagged(result: Simulated) -> bytes:
    return dumps({"content": result.content.decode(), "failures": result.verdict.failures})


def _unwrap_flagged(stored: bytes) -> tuple[bytes, Verdict]:
    record = orjson.loads(stored)
    return record["content"].encode(), Verdict(dict(record["failures"]))


def _event(
    tool: Tool, arguments: dict[str, Any], observation: str, fault: str | None
) -> dict[str, Any]:
    event: dict[str, Any] = {"tool": tool.name, "arguments": arguments, "observation": observation}
    if fault is not None:
        event["fault"] = fault
    return event


def _dump(policy: FaultPolicy | None) -> dict[str, Any] | None:
    """A policy in its normal form (defaults filled in): equal policies, equal toolset ids."""
    return policy.model_dump(mode="json") if policy is not None else None


def _check_fault_tools(toolset: Toolset, policy: FaultPolicy | None, param: str) -> None:
    unknown = sorted(set(policy.tools or []) - set(toolset.tools)) if policy else []
    if unknown:
        raise InvalidRequestError(
            f"the fault policy names tools that are not in the toolset: {unknown}", param=param
        )


def _not_simulated(modes: Mapping[str, str] | None) -> frozenset[str]:
    """Tools a real tool answers: the real answer is the truth, so nothing is inferred."""
    return frozenset(name for name, mode in (modes or {}).items() if mode != "simulated")


def _grounding_digest(grounding: dict[str, Any] | None) -> str | None:
    """The digest of the facts, without ``usefulness``: that only picks each call's role,
    which the cache key carries, so calls of the same role share observations across levels."""
    if grounding is None:
        return None
    return digest({k: v for k, v in grounding.items() if k != "usefulness"})


def _recorded_key(tool: Tool, arguments: dict[str, Any]) -> str:
    """Where ``record`` mode stores a real observation: the tool and arguments only, so a
    later simulated run replays it whatever its seed, episode or simulator model."""
    return digest({"v": RECORD_VERSION, "t": tool.digest, "a": arguments})


def _tool(toolset: Toolset, name: str, param: str) -> Tool:
    tool = toolset.tools.get(name)
    if tool is None:
        raise ToolNotFoundError(
            f"toolset {toolset.id!r} has no tool {name!r} (it has: {sorted(toolset.tools)})",
            param=param,
        )
    return tool


def _episode(episode_id: str, meta: dict[str, Any]) -> Episode:
    policy = meta.get("faults")
    return Episode(
        id=episode_id,
        toolset_id=meta["toolset_id"],
        seed=meta["seed"],
        grounding=meta["grounding"],
        grounding_digest=meta["grounding_digest"],
        faults=FaultPolicy.model_validate(policy) if policy is not None else None,
    )


def _trim(mapping: OrderedDict[Any, Any]) -> None:
    while len(mapping) > TOOLSET_LRU_SIZE:
        mapping.popitem(last=False)
