"""What the ToolActor needs from a cache: get and set bytes by key, and never fail a call."""

from __future__ import annotations

import abc


class ObservationCache(abc.ABC):
    """Maps cache keys to observation JSON bytes.

    A cache must not fail a tool call: when its store is unreachable, ``get`` returns None
    and ``set`` does nothing, ``healthy`` turns False, and it recovers by itself.
    """

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The cached observation, or None on a miss (or while the store is down)."""

    @abc.abstractmethod
    async def set(self, key: str, value: bytes) -> None:
        """Store an observation (only ever a valid one)."""

    @property
    def healthy(self) -> bool:
        """False while the store is known to be unreachable."""
        return True

    async def ping(self) -> bool:
        """Probe the store now (used by ``/ready``)."""
        return True

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
