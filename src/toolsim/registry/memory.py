"""In-process registry: the single-process default.

Records are kept as JSON bytes, as in Redis: a reader gets its own copy (parsing is several
times cheaper than ``copy.deepcopy``) and nobody can change a stored record in place.
"""

from __future__ import annotations

import orjson

from toolsim.registry.base import JSONDict, Registry


class MemoryRegistry(Registry):
    def __init__(self) -> None:
        self._toolsets: dict[str, bytes] = {}
        self._episodes: dict[str, bytes] = {}
        self._events: dict[str, list[bytes]] = {}
        self._aliases: dict[str, str] = {}

    async def put_toolset(self, record: JSONDict) -> None:
        self._toolsets.setdefault(record["id"], orjson.dumps(record))

    async def get_toolset(self, toolset_id: str) -> JSONDict | None:
        raw = self._toolsets.get(toolset_id)
        return orjson.loads(raw) if raw is not None else None

    async def list_toolsets(self, offset: int, limit: int) -> tuple[list[JSONDict], int]:
        page = list(self._toolsets.values())[offset : offset + limit]
        return [orjson.loads(raw) for raw in page], len(self._toolsets)

    async def put_alias(self, key: str, toolset_id: str) -> None:
        self._aliases[key] = toolset_id

    async def get_alias(self, key: str) -> str | None:
        return self._aliases.get(key)

    async def create_episode(self, episode_id: str, meta: JSONDict) -> None:
        self._episodes[episode_id] = orjson.dumps(meta)
        self._events[episode_id] = []

    async def get_episode(self, episode_id: str) -> JSONDict | None:
        raw = self._episodes.get(episode_id)
        return orjson.loads(raw) if raw is not None else None

    async def append_events(self, episode_id: str, events: list[JSONDict]) -> None:
        self._events.setdefault(episode_id, []).extend(orjson.dumps(e) for e in events)

    async def episode_events(self, episode_id: str) -> list[JSONDict]:
        return [orjson.loads(raw) for raw in self._events.get(episode_id, [])]
