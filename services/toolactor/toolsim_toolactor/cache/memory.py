"""In-process LRU cache: the default when no Redis URL is set (one process only)."""

from __future__ import annotations

from collections import OrderedDict

from toolsim_toolactor.cache.base import ObservationCache


class MemoryCache(ObservationCache):
    def __init__(self, max_entries: int = 100_000) -> None:
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._max = max_entries

    async def get(self, key: str) -> bytes | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)
