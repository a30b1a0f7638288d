"""The task taxonomy the ToolMaker classifies into, and the utility tools each class gets."""

from __future__ import annotations

from typing import Literal, get_args

TaskClass = Literal["multi_hop_qa", "numeric", "code", "transactional", "other"]
TASK_CLASSES: tuple[str, ...] = get_args(TaskClass)

DESCRIPTIONS: dict[str, str] = {
    "multi_hop_qa": "factual questions answered by looking up and combining facts",
    "numeric": "computations, unit conversions, statistics, money, dates arithmetic",
    "code": "writing, running or debugging programs",
    "transactional": "acting on a stateful service: bookings, orders, accounts, messages",
    "other": "anything else",
}

DEFAULT_UTILITIES: dict[str, tuple[str, ...]] = {
    "multi_hop_qa": ("search",),
    "numeric": ("calculator",),
    "code": ("python",),
    "transactional": (),
    "other": ("search",),
}
"""Predefined utility tools merged into a generated toolset when the request names none."""

STATEFUL_BY_DEFAULT: frozenset[str] = frozenset({"transactional"})
"""Classes whose generated tools change state: their observations depend on the history."""
