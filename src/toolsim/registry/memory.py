"""In-process registry: the single-process default."""

from __future__ import annotations

import copy

from toolsim.registry.base import JSONDict, Registry


class MemoryRegistry(Registry):
    def __init__(self) -> None:
        self._toolsets: dict[str, JSONDict] = {}
        self._episodes: dict[str, JSONDict] = {}
        self._events: dict[str, list[JSONDict]] = {}
        self._aliases: dict[str, str] = {}

    async def put_toolset(self, record: JSONDict) -> None:
        self._toolsets.setdefault(record["id"], copy.deepcopy(record))

    async def get_toolset(self, toolset_id: str) -> JSONDict | None:
        record = self._toolsets.get(toolset_id)
        return copy.deepcopy(record) if record is not None else None

    async def list_toolsets(self, offset: int, limit: int) -> tuple[list[JSONDict], int]:
        records = list(self._toolsets.values())[offset : offset + limit]
        return copy.deepcopy(records), len(self._toolsets)

    async def put_alias(self, key: str, toolset_id: str) -> None:
        self._aliases[key] = toolset_id

    async def get_alias(self, key: str) -> str | None:
        return self._aliases.get(key)

    async def create_episode(self, episode_id: str, meta: JSONDict) -> None:
        self._episodes[episode_id] = copy.deepcopy(meta)
        self._events[episode_id] = []

    async def get_episode(self, episode_id: str) -> JSONDict | None:
        meta = self._episodes.get(episode_id)
        return copy.deepcopy(meta) if meta is not None else None

    async def append_events(self, episode_id: str, events: list[JSONDict]) -> None:
        self._events.setdefault(episode_id, []).extend(copy.deepcopy(events))

    async def episode_events(self, episode_id: str) -> list[JSONDict]:
        return copy.deepcopy(self._events.get(episode_id, []))
