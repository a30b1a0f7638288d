"""Real tools for ``live`` and ``record`` modes: built-in utility tools or HTTP endpoints.

A tool in one of those modes is answered by the real thing instead of the LLM, so the same
agent code can run against simulated tools, real ones, or a mix. Which real things run is the
operator's decision, never the caller's: a utility tool runs only when ``TOOLSIM_LIVE_TOOLS``
lists it, an endpoint is called only as ``egress.py`` allows. Both are checked when a toolset
is registered (a clear 400) and again on every call, because a toolset in a shared registry
may have been registered by a replica that allows more.

The python sandbox is built at start-up when enabled, so a host without a working bubblewrap
fails then, not on the first call; the search index (seconds to build) on first use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from toolsim.errors import InvalidToolDefinitionError
from toolsim.tools import UTILITY_TOOLS, LiveTool
from toolsim.toolsets import Tool, Toolset
from toolsim_toolactor.egress import Egress

BUILT_AT_START = ("python",)
"""Utility tools built in the lifespan: their failure is a configuration error to show now."""


class LiveExecutor:
    def __init__(
        self, *, live_tools: Sequence[str], search_corpus: list[Path], egress: Egress
    ) -> None:
        self._enabled = frozenset(live_tools)
        self._corpus = search_corpus
        self._egress = egress
        self._tools: dict[str, LiveTool] = {}
        self._build_lock = asyncio.Lock()

    async def start(self) -> None:
        """Build the enabled tools whose set-up can fail (raises ``ToolConfigurationError``)."""
        try:
            for name in BUILT_AT_START:
                if name in self._enabled:
                    await self._utility(name)
        except BaseException:
            await self.aclose()
            raise

    def check(self, toolset: Toolset) -> None:
        """Refuse a toolset whose live/record tools this process will not run."""
        for name, tool in toolset.tools.items():
            if tool.endpoint is not None:
                self._egress.check(name, tool.endpoint)
            elif tool.mode != "simulated":
                self._check_utility(name, tool.mode)

    async def call(self, tool: Tool, arguments: dict[str, Any]) -> bytes:
        if tool.endpoint is not None:
            return await self._egress.post_json(tool.name, tool.endpoint, arguments)
        self._check_utility(tool.name, tool.mode)
        utility = await self._utility(tool.name)
        return orjson.dumps(await utility.call(arguments))

    async def aclose(self) -> None:
        await self._egress.aclose()

    def _check_utility(self, name: str, mode: str) -> None:
        param = f"modes.{name}"
        if name not in UTILITY_TOOLS:
            raise InvalidToolDefinitionError(
                f"tool {name!r} is {mode} but has no real implementation: give "
                f"live_endpoints.{name} or use a utility tool ({sorted(UTILITY_TOOLS)})",
                param=param,
            )
        if name not in self._enabled:
            raise InvalidToolDefinitionError(
                f"tool {name!r} is {mode}, but this server does not run {name!r} for real: "
                f"the operator enables it with TOOLSIM_LIVE_TOOLS='[\"{name}\"]'",
                param=param,
            )

    async def _utility(self, name: str) -> LiveTool:
        tool = self._tools.get(name)
        if tool is None:
            async with self._build_lock:
                tool = self._tools.get(name)
                if tool is None:
                    tool = await asyncio.to_thread(UTILITY_TOOLS[name], self._corpus)
                    self._tools[name] = tool
        return tool
