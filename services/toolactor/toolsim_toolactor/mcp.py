"""Each toolset as an MCP server: ``/v1/toolsets/{toolset_id}/mcp`` over streamable HTTP.

One low-level ``Server`` and one ``StreamableHTTPSessionManager`` serve every toolset: the
handlers read the toolset id from the path of the HTTP request that carried the message
(``ctx.request``), so there is nothing per toolset to create, cache or evict. The manager is
stateless with JSON responses: each POST is answered on its own, as the REST endpoints are,
so any replica behind a load balancer can answer any request and no MCP session outlives
the request that carried it. Episode consistency comes from the ``X-Episode-Id`` header,
exactly as on ``POST /v1/toolsets/{id}/tools/{name}``.

Tool failures (bad arguments, the backend down) are MCP tool results with ``isError`` set,
so a model sees them as tool messages and the session goes on; an unknown toolset is a 404
in the OpenAI envelope before any MCP handling.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import mcp_types as types
import orjson
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from toolsim import __version__
from toolsim.errors import InvalidRequestError, ToolsimError
from toolsim.http import error_response
from toolsim.toolsets import Tool, Toolset
from toolsim_toolactor.faults import InjectedFault
from toolsim_toolactor.replay import replayability_of
from toolsim_toolactor.serving import Observation, ToolActorService

PATH = "/v1/toolsets/{toolset_id}/mcp"
EPISODE_HEADER = "x-episode-id"
Context = ServerRequestContext[Any, Any]


class MCPFace:
    """The ASGI app behind ``PATH``; ``run(service)`` must enclose every request it serves.

    It is created with the FastAPI app (routes are fixed before start-up) and learns the
    service when the lifespan has built it.
    """

    def __init__(self, *, max_body_bytes: int) -> None:
        self._max_body_bytes = max_body_bytes
        self._service: ToolActorService | None = None
        self._manager: StreamableHTTPSessionManager | None = None

    @asynccontextmanager
    async def run(self, service: ToolActorService) -> AsyncIterator[None]:
        """Serve MCP for ``service`` while the context is open (one lifespan)."""
        # A manager runs once, so every lifespan gets a fresh one.
        manager = StreamableHTTPSessionManager(
            app=_server(service),
            json_response=True,
            stateless=True,
            max_request_body_size=self._max_body_bytes,
        )
        async with _in_own_task(manager.run()):
            self._service, self._manager = service, manager
            try:
                yield
            finally:
                self._service = self._manager = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._service is None or self._manager is None:
            raise RuntimeError("MCPFace.run() is not active: is the app's lifespan running?")
        toolset_id = scope.get("path_params", {}).get("toolset_id", "")
        try:
            await self._service.get_toolset(toolset_id)  # 404 before any MCP handling
        except ToolsimError as exc:
            await error_response(exc)(scope, receive, send)
            return
        await self._manager.handle_request(scope, receive, send)


@asynccontextmanager
async def _in_own_task(context: AbstractAsyncContextManager[None]) -> AsyncIterator[None]:
    """Hold ``context`` open from a task of its own while this context is open.

    The manager's anyio task group must be entered and left by one task, but a lifespan's
    start and end may run in different tasks (pytest-asyncio fixtures do exactly that).
    """
    entered, leave = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with context:
            entered.set()
            await leave.wait()

    task = asyncio.create_task(hold(), name="mcp-session-manager")
    waiter = asyncio.create_task(entered.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()  # it failed (or returned) before entering: raise that here
        raise RuntimeError("the MCP session manager stopped as it started")
    try:
        yield
    finally:
        leave.set()
        await task


def mcp_routes(face: MCPFace) -> list[Route]:
    """The routes to add to the app: with and without the trailing slash clients differ on."""
    return [_MCPRoute(path, face, include_in_schema=False) for path in (PATH, PATH + "/")]


class _MCPRoute(Route):
    """A ``Route`` that names itself in the scope, as FastAPI's do, so request metrics are
    labelled with the route template rather than ``unmatched``."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def _server(service: ToolActorService) -> Server[Any]:
    async def list_tools(
        ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        toolset = await service.get_toolset(_toolset_id(ctx))
        return types.ListToolsResult(tools=mcp_tools(toolset))

    async def call_tool(ctx: Context, params: types.CallToolRequestParams) -> types.CallToolResult:
        request = _request(ctx)
        try:
            observation = await service.call_tool(
                _toolset_id(ctx),
                params.name,
                params.arguments if params.arguments is not None else {},
                request.headers.get(EPISODE_HEADER),
                None,
            )
        except ToolsimError as exc:
            return tool_error(exc)
        if (replayability := replayability_of(request.scope)) is not None:
            replayability.replayable = observation.replayable
        return tool_result(observation.content, _meta(observation))

    return Server(
        "toolsim-toolactor",
        version=__version__,
        description="Simulated tools: every call is answered by the ToolActor.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def mcp_tools(toolset: Toolset) -> list[types.Tool]:
    return [mcp_tool(tool) for tool in toolset.tools.values()]


def mcp_tool(tool: Tool) -> types.Tool:
    # MCP requires an object-typed outputSchema (structuredContent is an object); a tool
    # whose observations are not objects is advertised without one and answers as text.
    object_output = tool.output_schema.get("type") == "object"
    return types.Tool(
        name=tool.name,
        description=tool.description or None,
        input_schema=tool.parameters,
        output_schema=tool.output_schema if object_output else None,
    )


def tool_result(content: bytes, meta: dict[str, Any] | None = None) -> types.CallToolResult:
    """The observation as structured content, and as the same JSON text for older clients.

    A body that is not JSON (an injected malformed or truncated one) is an error result with
    the body as its text: MCP has no successful result without structured content for a tool
    with an output schema, and an MCP server in front of a broken API would answer so."""
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError:
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=content.decode())],
            is_error=True,
            _meta=meta,
        )
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=content.decode())],
        structured_content=value if isinstance(value, dict) else None,
        _meta=meta,
    )


def _meta(observation: Observation) -> dict[str, Any] | None:
    """The simulator's flags and the injected fault, as ``observations[]`` carries them."""
    info: dict[str, Any] = {"source": observation.source}
    if not observation.verdict.passed:
        info["flags"] = list(observation.verdict.flags)
        info |= {flag: {"reason": r} for flag, r in observation.verdict.failures.items()}
    if observation.fault is not None:
        info["fault"] = observation.fault
    return {"toolsim": info} if len(info) > 1 else None


def tool_error(exc: ToolsimError) -> types.CallToolResult:
    """A failure the model should read (as it would a real tool's error), not a crash."""
    where = f" (param: {exc.param})" if exc.param else ""
    meta = None
    if isinstance(exc, InjectedFault):  # what HTTP says in its status line and headers
        meta = {"toolsim": {"fault": exc.kind, "status": exc.status_code}}
        if exc.retry_after_s is not None:
            meta["toolsim"]["retry_after_s"] = exc.retry_after_s
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"{exc.code}: {exc.message}{where}")],
        is_error=True,
        _meta=meta,
    )


def _request(ctx: Context) -> Request:
    request = ctx.request
    if not isinstance(request, Request):
        # Only reachable if this server were driven by a non-HTTP transport.
        raise InvalidRequestError("toolsim serves MCP over streamable HTTP only")
    return request


def _toolset_id(ctx: Context) -> str:
    return str(_request(ctx).path_params["toolset_id"])
