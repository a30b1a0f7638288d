"""The ToolActor application factory: state is built in the lifespan and injected."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from toolsim import __version__, apidoc
from toolsim.access import AccessControl, Guard, build_guard
from toolsim.http import NO_OTEL, MetricsMiddleware, install_error_handlers
from toolsim.llm.base import LLMBackend
from toolsim.llm.bounded import BoundedBackend
from toolsim.llm.factory import build_backend
from toolsim.registry import MemoryRegistry, RedisRegistry, Registry, redis_client
from toolsim.schema_inference import OutputSchemaInferrer
from toolsim_toolactor.cache import MemoryCache, NearCache, ObservationCache, RedisCache
from toolsim_toolactor.config import ActorSettings
from toolsim_toolactor.egress import Egress
from toolsim_toolactor.live import LiveExecutor
from toolsim_toolactor.mcp import MCPFace, mcp_routes
from toolsim_toolactor.metrics import ActorMetrics
from toolsim_toolactor.prompt import PROMPT_TEXTS
from toolsim_toolactor.protocol import EpisodeCreate, ToolCallsRequest, ToolsetCreate
from toolsim_toolactor.quality import quality_gate
from toolsim_toolactor.replay import ReplayFront, ResponseCache, face_of
from toolsim_toolactor.routes import episodes, system, tool_calls, toolsets
from toolsim_toolactor.serving import ToolActorService
from toolsim_toolactor.simulator import Simulator
from toolsim_toolactor.state import ActorState


def create_app(
    settings: ActorSettings | None = None,
    *,
    backend: LLMBackend | None = None,
    cache: ObservationCache | None = None,
    registry: Registry | None = None,
) -> FastAPI:
    """Build the app. Parts passed in replace the ones the settings would build."""
    settings = settings or ActorSettings()
    metrics = ActorMetrics()
    mcp_face = MCPFace(max_body_bytes=settings.max_body_bytes)
    guard = build_guard(settings, metrics.registry)  # None: no API keys, nothing to check

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        live = _live(settings)
        await live.start()  # a python tool that cannot run fails start-up, not its first call
        redis_client = _redis(settings)
        # observations and schema inference share one deadline per generation and one cap
        # on those in flight, as on the ToolMaker
        llm = BoundedBackend(
            backend or build_backend(settings),
            timeout_s=settings.llm_timeout_s,
            max_concurrent=settings.max_concurrent_generations,
        )
        obs_cache = cache or _cache(settings, redis_client, metrics)
        reg = registry or _registry(settings, redis_client)
        await llm.start()
        # Everything built so far (the model, torch, transformers) lives as long as the
        # process: move it out of the cyclic GC's reach, so collections on the hot path only
        # walk request garbage.
        gc.collect()
        gc.freeze()
        simulator = Simulator(
            llm,
            metrics,
            temperature=settings.temperature,
            max_tokens=settings.max_tokens,
            presence_penalty=settings.presence_penalty,
            max_attempts=settings.max_generation_attempts,
            gates=(quality_gate(PROMPT_TEXTS),),
        )
        inferrer = OutputSchemaInferrer(
            llm,
            store=obs_cache,
            attempts=settings.max_generation_attempts,
            on_outcome=lambda outcome: metrics.schema_inferences.labels(outcome).inc(),
        )
        service = ToolActorService(
            registry=reg,
            cache=obs_cache,
            simulator=simulator,
            inferrer=inferrer,
            live=live,
            metrics=metrics,
            model_name=llm.model_name,
            default_seed=settings.default_seed,
            history_events=settings.history_events,
        )
        responses = front = None
        if settings.near_cache_max_bytes:
            responses = ResponseCache(
                max_bytes=settings.near_cache_max_bytes, ttl_s=settings.near_cache_ttl_s
            )
            front = ReplayFront(responses, guard, metrics, settings.max_body_bytes)
        app.state.actor = ActorState(
            settings, llm, obs_cache, reg, metrics, service, responses, front
        )
        try:
            async with mcp_face.run(service):
                yield
        finally:
            await llm.aclose()
            await live.aclose()
            if guard is not None:
                await guard.aclose()
            await obs_cache.aclose()
            if redis_client is not None:
                await redis_client.aclose()

    app = ToolActorApp(
        title="toolsim ToolActor",
        version=__version__,
        description="Simulated tool observations over OpenAI wire formats.",
        lifespan=lifespan,
        telemetry=NO_OTEL,
    )
    install_error_handlers(app)
    for module in (toolsets, episodes, system):
        app.include_router(module.router)
    apidoc.install(
        app, (ToolCallsRequest, ToolsetCreate, EpisodeCreate), documented=[tool_calls.DOCUMENTED]
    )
    app.routes.extend(mcp_routes(mcp_face))  # /v1/toolsets/{toolset_id}/mcp
    app.add_middleware(MetricsMiddleware, observe=metrics.observe_request)
    app.guard = guard  # the fast path checks keys itself
    if guard is not None:
        app.add_middleware(AccessControl, guard=guard)
    return app


class ToolActorApp(FastAPI):
    """The ToolActor's ASGI app, as tests, ``toolsim serve`` and any ASGI server get it.

    ``POST /v1/tool_calls`` (the RL hot path) is answered by ``tool_calls.fast_path`` before
    anything FastAPI adds (its error middleware and request dispatch cost the cache-hit path
    ~5%, py-spy); calls on the REST and MCP faces pass ``ReplayFront`` first, which answers
    the ones it kept (``replay.py``); every other request goes through FastAPI as usual."""

    guard: Guard | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if tool_calls.handles(scope):
            await tool_calls.fast_path(self.state.actor, self.guard, scope, receive, send)
            return
        face = face_of(scope)
        if face is not None and (front := self.state.actor.front) is not None:
            await front(face, scope, receive, send, super().__call__)
            return
        await super().__call__(scope, receive, send)


def _live(settings: ActorSettings) -> LiveExecutor:
    egress = Egress(
        hosts=settings.live_hosts,
        allowed_networks=settings.live_allowed_networks,
        max_response_bytes=settings.live_max_response_bytes,
        timeout_s=settings.live_timeout_s,
    )
    return LiveExecutor(
        live_tools=settings.live_tools, search_corpus=settings.search_corpus, egress=egress
    )


def _redis(settings: ActorSettings) -> aioredis.Redis | None:
    return redis_client(settings.redis_url) if settings.redis_url is not None else None


def _cache(
    settings: ActorSettings, client: aioredis.Redis | None, metrics: ActorMetrics
) -> ObservationCache:
    if settings.cache_redis_url is not None:  # observations on a Redis of their own
        client = redis_client(settings.cache_redis_url)
    if client is None:
        return MemoryCache(settings.memory_cache_size)

    def on_error() -> None:
        metrics.cache_errors.inc()
        metrics.cache_degraded.set(1)

    shared = RedisCache(
        client, prefix=settings.redis_prefix, ttl_s=settings.cache_ttl_s, on_error=on_error
    )
    if not settings.near_cache_max_bytes:
        return shared
    return NearCache(
        shared, max_bytes=settings.near_cache_max_bytes, ttl_s=settings.near_cache_ttl_s
    )


def _registry(settings: ActorSettings, client: aioredis.Redis | None) -> Registry:
    if client is None:
        return MemoryRegistry(
            max_toolsets=settings.memory_max_toolsets,
            max_episodes=settings.memory_max_episodes,
            max_events=settings.episode_max_events,
        )
    return RedisRegistry(
        client,
        prefix=settings.redis_prefix,
        episode_ttl_s=settings.episode_ttl_s,
        max_events=settings.episode_max_events,
    )
