"""The ToolMaker application factory: state is built in the lifespan and injected."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from toolsim import __version__, apidoc
from toolsim.access import AccessControl, build_guard
from toolsim.http import NO_OTEL, MetricsMiddleware, install_error_handlers
from toolsim.llm.base import LLMBackend
from toolsim.llm.bounded import BoundedBackend
from toolsim.llm.factory import build_backend
from toolsim.registry import MemoryRegistry, RedisRegistry, Registry, redis_client
from toolsim.schema_inference import OutputSchemaInferrer
from toolsim_toolmaker.config import MakerSettings
from toolsim_toolmaker.generation import ToolGenerator
from toolsim_toolmaker.metrics import MakerMetrics
from toolsim_toolmaker.protocol import ChatCompletionRequest, ToolsetRequest
from toolsim_toolmaker.routes import chat, system, toolsets
from toolsim_toolmaker.serving import ToolMakerService
from toolsim_toolmaker.state import MakerState


def create_app(
    settings: MakerSettings | None = None,
    *,
    backend: LLMBackend | None = None,
    registry: Registry | None = None,
) -> FastAPI:
    """Build the app. Parts passed in replace the ones the settings would build."""
    settings = settings or MakerSettings()
    metrics = MakerMetrics()
    guard = build_guard(settings, metrics.registry)  # None: no API keys, nothing to check

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = None
        if registry is None and settings.redis_url is not None:
            client = redis_client(settings.redis_url, socket_timeout_s=2.0)
        reg = registry or (
            RedisRegistry(client, prefix=settings.redis_prefix) if client else MemoryRegistry()
        )
        # classification, tool generation and schema inference all share one deadline per
        # generation and one cap on those in flight, as the ToolActor's simulator does
        llm = BoundedBackend(
            backend or build_backend(settings),
            timeout_s=settings.llm_timeout_s,
            max_concurrent=settings.max_concurrent_generations,
        )
        await llm.start()
        generator = ToolGenerator(
            llm,
            metrics,
            attempts=settings.maker_attempts,
            temperature=settings.maker_temperature,
            max_tokens=settings.maker_max_tokens,
        )
        inferrer = OutputSchemaInferrer(
            llm,
            attempts=settings.maker_attempts,
            on_outcome=lambda outcome: metrics.schema_inferences.labels(outcome).inc(),
        )
        service = ToolMakerService(
            registry=reg,
            generator=generator,
            inferrer=inferrer,
            metrics=metrics,
            settings=settings,
            model_name=llm.model_name,
        )
        app.state.maker = MakerState(settings, llm, reg, metrics, service)
        try:
            yield
        finally:
            await llm.aclose()
            if client is not None:
                await client.aclose()
            if guard is not None:
                await guard.aclose()

    app = FastAPI(
        title="toolsim ToolMaker",
        version=__version__,
        description="Turns a task into validated OpenAI tool definitions.",
        lifespan=lifespan,
        telemetry=NO_OTEL,
    )
    install_error_handlers(app)
    for module in (toolsets, chat, system):
        app.include_router(module.router)
    apidoc.install(app, (ToolsetRequest, ChatCompletionRequest))
    app.add_middleware(MetricsMiddleware, observe=metrics.observe_request)
    if guard is not None:
        app.add_middleware(AccessControl, guard=guard)
    return app
