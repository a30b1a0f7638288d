"""Reproducible draws from content: the same parts give the same number in every process.

Usefulness and fault decisions are drawn from the seed and the call rather than from a random
generator, so a replay (another replica, a restart, a rerun of a training step) decides the
same way, and one call's decision never depends on which calls came before it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from toolsim.jsonutil import canonical

_SCALE = float(1 << 52)


def unit_draw(*parts: Any) -> float:
    """A number in [0, 1), uniform over the digests of ``parts`` (JSON values)."""
    value = int.from_bytes(hashlib.sha256(canonical(parts)).digest()[:8], "big") >> 12
    return value / _SCALE
