"""The ToolActor's logic: resolve the toolset, validate, look up, coalesce, simulate.

One observation's life: arguments are validated against the tool's ``parameters``; the cache
key is a digest of everything that determines the observation; a hit is returned as stored;
a miss joins an identical in-flight generation or starts one, and only a valid observation
is written back. Nothing here knows which cache or backend it holds.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from toolsim.errors import (
    EpisodeNotFoundError,
    InvalidRequestError,
    ToolNotFoundError,
    ToolsetNotFoundError,
)
from toolsim.jsonutil import digest, dumps
from toolsim.registry import Registry
from toolsim.singleflight import SingleFlight
from toolsim.toolsets import Tool, Toolset, build_toolset, toolset_from_record
from toolsim_toolactor.cache import ObservationCache
from toolsim_toolactor.live import LiveExecutor
from toolsim_toolactor.metrics import ActorMetrics
from toolsim_toolactor.prompt import PROMPT_VERSION, EpisodeContext
from toolsim_toolactor.protocol import EpisodeCreate, ToolCallsRequest
from toolsim_toolactor.simulator import Simulator

Source = Literal["cache", "simulated", "live"]
RECORD_VERSION = "rec1"
TOOLSET_LRU_SIZE = 1024
ARGUMENTS_MEMO_SIZE = 8192


@dataclass(frozen=True)
class Observation:
    content: bytes
    """The observation as compact JSON."""
    source: Source
    latency_ms: float


@dataclass(frozen=True)
class Episode:
    id: str
    toolset_id: str
    seed: int
    grounding: dict[str, Any] | None
    grounding_digest: str | None


class ToolActorService:
    def __init__(
        self,
        *,
        registry: Registry,
        cache: ObservationCache,
        simulator: Simulator,
        live: LiveExecutor,
        metrics: ActorMetrics,
        model_name: str,
        default_seed: int,
        history_events: int,
    ) -> None:
        self._registry = registry
        self._cache = cache
        self._simulator = simulator
        self._live = live
        self._metrics = metrics
        self._model_name = model_name
        self._default_seed = default_seed
        self._history_events = history_events
        self._toolsets: OrderedDict[str, Toolset] = OrderedDict()
        self._inline_ids: OrderedDict[bytes, str] = OrderedDict()
        self._flights: SingleFlight[bytes] = SingleFlight()
        self._valid_arguments: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()

    # -- toolsets ---------------------------------------------------------------------------

    async def register_toolset(
        self,
        tools: list[dict[str, Any]],
        output_schemas: dict[str, Any] | None,
        stateful: dict[str, bool] | None,
        modes: dict[str, str] | None = None,
        live_endpoints: dict[str, str] | None = None,
    ) -> Toolset:
        toolset = build_toolset(tools, output_schemas, stateful, modes, live_endpoints)
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

    def inline_toolset(self, request: ToolCallsRequest) -> Toolset:
        """Validate inline tools once; later requests with the same tools reuse the result."""
        # The memo key is the raw JSON, unsorted: cheaper than a canonical digest, and a
        # differently ordered copy only costs one more validation, not a wrong answer.
        key = dumps(
            (
                request.tools,
                request.output_schemas,
                request.stateful,
                request.modes,
                request.live_endpoints,
            )
        )
        toolset_id = self._inline_ids.get(key)
        if toolset_id is not None and toolset_id in self._toolsets:
            return self._toolsets[toolset_id]
        toolset = build_toolset(
            request.tools or [],
            request.output_schemas,
            request.stateful,
            request.modes,
            request.live_endpoints,
        )
        self._live.check(toolset)
        self._remember(toolset)
        self._inline_ids[key] = toolset.id
        _trim(self._inline_ids)
        return toolset

    def _remember(self, toolset: Toolset) -> None:
        self._toolsets[toolset.id] = toolset
        self._toolsets.move_to_end(toolset.id)
        _trim(self._toolsets)

    # -- episodes ---------------------------------------------------------------------------

    async def create_episode(self, body: EpisodeCreate) -> Episode:
        await self.get_toolset(body.toolset_id)  # 404 before anything is stored
        grounding = body.grounding.model_dump() if body.grounding is not None else None
        meta: dict[str, Any] = {
            "toolset_id": body.toolset_id,
            "seed": body.seed if body.seed is not None else secrets.randbits(31),
            "grounding": grounding,
            "grounding_digest": digest(grounding) if grounding is not None else None,
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
            toolset = self.inline_toolset(request)
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
        episode, context = await self._episode_context(toolset, episode_id)
        if seed is None:
            seed = episode.seed if episode is not None else self._default_seed
        history_digest = digest(context.history) if context is not None else None
        if len(calls) == 1:  # the common case: no task or gather on the hot path
            observations = [await self._one(*calls[0], episode, context, seed, history_digest)]
        else:
            observations = list(
                await asyncio.gather(
                    *(self._one(t, a, episode, context, seed, history_digest) for t, a in calls)
                )
            )
        if episode is not None:
            events = [
                {"tool": tool.name, "arguments": args, "observation": obs.content.decode()}
                for (tool, args), obs in zip(calls, observations, strict=True)
            ]
            await self._registry.append_events(episode.id, events)
        return observations

    async def _episode_context(
        self, toolset: Toolset, episode_id: str | None
    ) -> tuple[Episode | None, EpisodeContext | None]:
        if episode_id is None:
            return None, None
        episode = await self.get_episode(episode_id)
        if episode.toolset_id != toolset.id:
            raise InvalidRequestError(
                f"episode {episode_id!r} belongs to toolset {episode.toolset_id!r}, "
                f"not {toolset.id!r}",
                param="episode_id",
            )
        history = await self._registry.episode_events(episode_id)
        recent = history[-self._history_events :] if self._history_events else []
        return episode, EpisodeContext(episode_id, episode.grounding, recent)

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
        key = digest(
            {
                "v": PROMPT_VERSION,
                "m": self._model_name,
                "t": tool.digest,
                "a": arguments,
                "g": episode.grounding_digest if episode is not None else None,
                "s": seed,
                "h": history_digest if tool.stateful else None,
            }
        )
        cached = await self._cache.get(key)
        if cached is not None:
            self._metrics.cache_hits.inc()
            self._metrics.cache_observations.inc()
            return Observation(cached, "cache", (time.perf_counter() - started) * 1000)
        self._metrics.cache_misses.inc()
        recorded = await self._cache.get(_recorded_key(tool, arguments))
        if recorded is not None:  # a real observation recorded earlier beats a simulated one
            self._metrics.cache_observations.inc()
            return Observation(recorded, "cache", (time.perf_counter() - started) * 1000)
        content = await self._coalesced(key, tool, arguments, context, seed)
        self._metrics.simulated_observations.inc()
        return Observation(content, "simulated", (time.perf_counter() - started) * 1000)

    async def _coalesced(
        self,
        key: str,
        tool: Tool,
        arguments: dict[str, Any],
        context: EpisodeContext | None,
        seed: int,
    ) -> bytes:
        content, joined = await self._flights.run(
            key, lambda: self._generate(key, tool, arguments, context, seed)
        )
        if joined:
            self._metrics.coalesced.inc()
        return content

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
    ) -> bytes:
        content = await self._simulator.simulate(tool, arguments, context, seed)
        await self._cache.set(key, content)  # only reached with a valid observation
        return content


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
    return Episode(
        id=episode_id,
        toolset_id=meta["toolset_id"],
        seed=meta["seed"],
        grounding=meta["grounding"],
        grounding_digest=meta["grounding_digest"],
    )


def _trim(mapping: OrderedDict[Any, Any]) -> None:
    while len(mapping) > TOOLSET_LRU_SIZE:
        mapping.popitem(last=False)
