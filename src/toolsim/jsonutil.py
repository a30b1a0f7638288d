"""Canonical JSON and content digests: the basis of ids and cache keys."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

MAX_SAFE_INT = 2**53 - 1
"""Largest integer every JSON reader keeps exact (JavaScript's ``Number.MAX_SAFE_INTEGER``):
the bound of seeds, which go into digests and to the engine."""


def canonical(value: Any) -> bytes:
    """Compact JSON with sorted keys: equal values give equal bytes."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def dumps(value: Any) -> bytes:
    """Compact JSON bytes (key order kept)."""
    return orjson.dumps(value)


def digest(value: Any) -> str:
    """sha256 hex digest of the canonical JSON of ``value``."""
    return hashlib.sha256(canonical(value)).hexdigest()
