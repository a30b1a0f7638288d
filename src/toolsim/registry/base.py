"""The registry seam. Records are plain JSON-able dicts; each write is whole or absent."""

from __future__ import annotations

import abc
from typing import Any

JSONDict = dict[str, Any]

DEFAULT_MAX_EVENTS = 1024
"""Events kept per episode (the newest): a long episode cannot grow a record without bound."""


class Registry(abc.ABC):
    """Stores toolsets (forever, content-addressed) and episodes (with a TTL), and each
    episode's newest events (at most ``max_events``; older ones are dropped as new ones come).

    Implementations raise ``toolsim.errors.StoreUnavailableError`` when their store cannot
    be reached.
    """

    @abc.abstractmethod
    async def put_toolset(self, record: JSONDict) -> None:
        """Store a toolset record under ``record["id"]``; storing it twice is a no-op."""

    @abc.abstractmethod
    async def get_toolset(self, toolset_id: str) -> JSONDict | None:
        """The record, or None when no such toolset exists."""

    @abc.abstractmethod
    async def list_toolsets(self, offset: int, limit: int) -> tuple[list[JSONDict], int]:
        """A page of toolset records, oldest first, and the total count."""

    @abc.abstractmethod
    async def put_alias(self, key: str, toolset_id: str) -> None:
        """Remember that ``key`` (e.g. a generation request digest) produced ``toolset_id``."""

    @abc.abstractmethod
    async def get_alias(self, key: str) -> str | None:
        """The toolset id stored under ``key``, if any."""

    @abc.abstractmethod
    async def create_episode(self, episode_id: str, meta: JSONDict) -> None:
        """Store a new episode's metadata."""

    @abc.abstractmethod
    async def get_episode(self, episode_id: str) -> JSONDict | None:
        """The episode's metadata, or None when it does not exist (or expired)."""

    @abc.abstractmethod
    async def append_events(self, episode_id: str, events: list[JSONDict]) -> None:
        """Append tool call events (call + observation) to an episode's history."""

    @abc.abstractmethod
    async def episode_events(self, episode_id: str, last: int | None = None) -> list[JSONDict]:
        """The episode's history, oldest first: its ``last`` events (all kept ones if None).

        A registry keeps at most its ``max_events`` newest events per episode."""

    async def ping(self) -> bool:
        """Whether the store answers now."""
        return True
