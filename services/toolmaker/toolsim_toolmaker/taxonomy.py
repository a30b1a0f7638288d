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

CLASS_WORDS: dict[str, tuple[str, str]] = {
    "lookup": ("multi_hop_qa", "facts about people, places, works, events"),
    "math": ("numeric", "calculations"),
    "programming": ("code", "writing or running code"),
    "booking": ("transactional", "acting on a service: orders, reservations, accounts"),
    "other": ("other", "anything else"),
}
"""The words the LLM chooses between, and the class each means. Plain words, not class names:
on 12 HotpotQA questions SmolLM2-135M chose ``lookup`` 11 times, but ``multi_hop_qa`` once
(``numeric`` 9 times) when asked for the class names, few-shot examples or not."""

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
