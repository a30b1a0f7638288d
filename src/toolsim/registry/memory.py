"""In-process registry: the single-process default, bounded.

Records are kept as JSON bytes, as in Redis: a reader gets its own copy (parsing is several
times cheaper than ``copy.deepcopy``) and nobody can change a stored record in place.

Bounds (a long-running process must not grow without limit): at most ``max_toolsets``
toolsets, after which a new one is refused with ``RegistryFullError`` (toolsets are never
evicted: a client holding an id would find it gone); at most ``max_episodes`` episodes, the
oldest dropped first with their events (as Redis's TTL would expire them); at most
``max_events`` events per episode, the oldest dropped first; as many generation aliases as
toolsets, the oldest dropped first (an alias only spares a regeneration).
"""

from __future__ import annotations

from collections import OrderedDict, deque

import orjson

from toolsim.errors import RegistryFullError
from toolsim.registry.base import DEFAULT_MAX_EVENTS, JSONDict, Registry


class MemoryRegistry(Registry):
    def __init__(
        self,
        *,
        max_toolsets: int = 10_000,
        max_episodes: int = 10_000,
        max_events: int = DEFAULT_MAX_EVENTS,
    ) -> None:
        if min(max_toolsets, max_episodes, max_events) < 1:
            raise ValueError("max_toolsets, max_episodes and max_events must be at least 1")
        self.max_toolsets = max_toolsets
        self.max_episodes = max_episodes
        self.max_events = max_events
        self._toolsets: dict[str, bytes] = {}
        self._episodes: OrderedDict[str, bytes] = OrderedDict()
        self._events: dict[str, deque[bytes]] = {}
        self._aliases: OrderedDict[str, str] = OrderedDict()

    async def put_toolset(self, record: JSONDict) -> None:
        if record["id"] in self._toolsets:
            return
        if len(self._toolsets) >= self.max_toolsets:
            raise RegistryFullError(
                f"this process's in-memory registry holds its maximum of {self.max_toolsets} "
                "toolsets: set TOOLSIM_REDIS_URL to keep toolsets in Redis"
            )
        self._toolsets[record["id"]] = orjson.dumps(record)

    async def get_toolset(self, toolset_id: str) -> JSONDict | None:
        raw = self._toolsets.get(toolset_id)
        return orjson.loads(raw) if raw is not None else None

    async def list_toolsets(self, offset: int, limit: int) -> tuple[list[JSONDict], int]:
        page = list(self._toolsets.values())[offset : offset + limit]
        return [orjson.loads(raw) for raw in page], len(self._toolsets)

    async def put_alias(self, key: str, toolset_id: str) -> None:
        self._aliases[key] = toolset_id
        self._aliases.move_to_end(key)
        while len(self._aliases) > self.max_toolsets:
            self._aliases.popitem(last=False)

    async def get_alias(self, key: str) -> str | None:
        return self._aliases.get(key)

    async def create_episode(self, episode_id: str, meta: JSONDict) -> None:
        self._episodes[episode_id] = orjson.dumps(meta)
        self._episodes.move_to_end(episode_id)
        self._events[episode_id] = deque(maxlen=self.max_events)
        while len(self._episodes) > self.max_episodes:
            dropped, _ = self._episodes.popitem(last=False)
            self._events.pop(dropped, None)

    async def get_episode(self, episode_id: str) -> JSONDict | None:
        raw = self._episodes.get(episode_id)
        return orjson.loads(raw) if raw is not None else None

    async def append_events(self, episode_id: str, events: list[JSONDict]) -> None:
        if episode_id not in self._episodes:
            return  # dropped (as an expired Redis episode would be): nothing to append to
        self._events[episode_id].extend(orjson.dumps(e) for e in events)

    async def episode_events(self, episode_id: str, last: int | None = None) -> list[JSONDict]:
        kept = self._events.get(episode_id, ())
        count = len(kept) if last is None else min(last, len(kept))
        if count <= 0:
            return []
        return [orjson.loads(raw) for raw in list(kept)[-count:]]
