"""Identical concurrent work runs once, and every caller gets its result.

The work runs as its own task, shielded from callers: one that goes away does not cancel
what others still wait for, and a failure is retrieved even when every caller has gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Task[T]] = {}

    async def run(self, key: str, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """The result of ``work`` for ``key``, and whether it joined a flight in progress."""
        task = self._inflight.get(key)
        joined = task is not None
        if task is None:
            task = asyncio.ensure_future(work())
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._finished(key, t))
        return await asyncio.shield(task), joined

    def _finished(self, key: str, task: asyncio.Task[T]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # mark retrieved: every waiter may have gone away
