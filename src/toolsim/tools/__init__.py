"""Real utility tools for ``live`` and ``record`` modes, behind the ``LiveTool`` seam.

UTILITY_TOOLS            name -> factory
build_utility_tools()    the named tools, built once (the search index, the sandbox check)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from toolsim.errors import InvalidRequestError
from toolsim.tools.base import LiveTool, ToolConfigurationError
from toolsim.tools.calculator import Calculator, calculator_interface
from toolsim.tools.python import PythonSandbox, python_interface
from toolsim.tools.search import BM25Search, search_interface

ToolFactory = Callable[[list[Path]], LiveTool]
"""Builds one tool; receives the search corpus files (only ``search`` uses them)."""

UTILITY_TOOLS: dict[str, ToolFactory] = {
    "search": lambda corpus: BM25Search(corpus),
    "calculator": lambda _corpus: Calculator(),
    "python": lambda _corpus: PythonSandbox(),
}

__all__ = [
    "UTILITY_TOOLS",
    "BM25Search",
    "Calculator",
    "LiveTool",
    "PythonSandbox",
    "ToolConfigurationError",
    "build_utility_tools",
    "utility_definitions",
]


def build_utility_tools(names: Iterable[str], *, search_corpus: list[Path]) -> dict[str, LiveTool]:
    """Build the named tools; raises ``ToolConfigurationError`` for unknown names."""
    wanted = list(dict.fromkeys(names))
    unknown = [name for name in wanted if name not in UTILITY_TOOLS]
    if unknown:
        raise ToolConfigurationError(
            f"unknown utility tool(s) {unknown}; known: {sorted(UTILITY_TOOLS)}"
        )
    return {name: UTILITY_TOOLS[name](search_corpus) for name in wanted}


def utility_definitions(names: Iterable[str]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """(definition, output schema) of each named utility tool, without building it.

    Raises ``InvalidRequestError`` naming the first unknown name (``utility_tools[i]``).
    """
    interfaces = {
        "search": search_interface,
        "calculator": calculator_interface,
        "python": python_interface,
    }
    out: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for i, name in enumerate(names):
        if name not in interfaces:
            raise InvalidRequestError(
                f"unknown utility tool {name!r}; known: {sorted(interfaces)}",
                param=f"utility_tools[{i}]",
            )
        out[name] = interfaces[name]()
    return out
