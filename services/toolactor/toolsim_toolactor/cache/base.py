"""What the ToolActor needs from a cache: get and set bytes by key, and never fail a call;
and, for a cache shared by several replicas, a claim on a key's generation, so that N
identical concurrent calls spread over the replicas cost one generation."""

from __future__ import annotations

import abc


class Claim:
    """The right to generate one key's observation; released when the generation is done
    (stored or failed). This base claim is local: nothing to release."""

    async def release(self) -> None:
        """Let waiting replicas go on (they read the stored result, or generate themselves)."""


LOCAL_CLAIM = Claim()


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

    async def claim(self, key: str) -> Claim | None:
        """Claim the generation of ``key`` for this process: a ``Claim`` to release when done,
        or None while another replica holds it (then poll ``get`` and ``claimed``). A cache no
        other process shares, or a store that is down, grants every claim."""
        return LOCAL_CLAIM

    async def claimed(self, key: str) -> bool:
        """Whether some replica holds the claim on ``key`` now."""
        return False

    async def ping(self) -> bool:
        """Probe the store now (used by ``/ready``)."""
        return True

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
