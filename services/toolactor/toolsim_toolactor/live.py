"""Real tools for ``live`` and ``record`` modes: built-in utility tools or HTTP endpoints.

A tool in one of those modes is answered by the real thing instead of the LLM, so the same
agent code can run against simulated tools, real ones, or a mix. Utility tools are built on
first use (the search index takes seconds), once per process.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson

from toolsim.errors import InvalidToolDefinitionError, LiveToolError
from toolsim.tools import UTILITY_TOOLS, LiveTool
from toolsim.toolsets import Tool, Toolset


class LiveExecutor:
    def __init__(
        self,
        *,
        search_corpus: list[Path],
        timeout_s: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._corpus = search_corpus
        self._tools: dict[str, LiveTool] = {}
        self._build_lock = asyncio.Lock()
        self._client = httpx.AsyncClient(timeout=timeout_s, transport=transport)

    def check(self, toolset: Toolset) -> None:
        """Refuse a toolset whose live/record tools this process cannot run."""
        for name, tool in toolset.tools.items():
            if tool.mode == "simulated" or tool.endpoint is not None:
                continue
            if name not in UTILITY_TOOLS:
                raise InvalidToolDefinitionError(
                    f"tool {name!r} is {tool.mode} but has no real implementation: give "
                    f"live_endpoints.{name} or use a utility tool ({sorted(UTILITY_TOOLS)})",
                    param=f"modes.{name}",
                )
            if name == "search" and not self._corpus:
                raise InvalidToolDefinitionError(
                    "the live search tool needs a corpus: set TOOLSIM_SEARCH_CORPUS",
                    param=f"modes.{name}",
                )

    async def call(self, tool: Tool, arguments: dict[str, Any]) -> bytes:
        if tool.endpoint is not None:
            return await self._http(tool.endpoint, tool.name, arguments)
        utility = await self._utility(tool.name)
        return orjson.dumps(await utility.call(arguments))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _utility(self, name: str) -> LiveTool:
        tool = self._tools.get(name)
        if tool is None:
            async with self._build_lock:
                tool = self._tools.get(name)
                if tool is None:
                    tool = await asyncio.to_thread(UTILITY_TOOLS[name], self._corpus)
                    self._tools[name] = tool
        return tool

    async def _http(self, url: str, name: str, arguments: dict[str, Any]) -> bytes:
        try:
            response = await self._client.post(url, json=arguments)
        except httpx.HTTPError as exc:
            raise LiveToolError(f"live tool {name!r} at {url} failed: {exc!r}") from exc
        if response.status_code != 200:
            raise LiveToolError(
                f"live tool {name!r} answered {response.status_code}: {response.text[:300]}"
            )
        try:
            value = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise LiveToolError(f"live tool {name!r} answered non-JSON") from exc
        if not isinstance(value, dict):
            raise LiveToolError(f"live tool {name!r} answered JSON that is not an object")
        return orjson.dumps(value)
