"""Post-generation checks: what a schema-valid observation must also satisfy.

The simulator runs every ``Gate`` of a call on each schema-valid generation. A gate is a
named list of checks (``fidelity``: the observation agrees with the grounding facts;
``quality``: it is plausible); each check is a pure function of the observation that returns
a short reason when it fails, or None. A generation that fails a gate is regenerated with a
new seed, like a schema failure; when the attempts run out, the last schema-valid generation
is returned *flagged* with the names of the gates it fails and their reasons, and it is
cached only under a key the pass path never reads (``serving.flagged_key``), so a flagged
observation is replayed flagged and never served as if it had passed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from toolsim.toolsets import Tool


@dataclass(frozen=True)
class CheckInput:
    """What a check sees: the call and its schema-valid observation."""

    tool: Tool
    arguments: dict[str, Any]
    value: Any
    """The parsed observation."""
    text: str
    """Every string and number of the observation, joined (what a reader would see)."""


Check = Callable[[CheckInput], str | None]
"""A pure function of the observation: a short failure reason (a metric label), or None."""


@dataclass(frozen=True)
class Gate:
    """A named set of checks; its name is the flag a failing observation carries."""

    flag: str
    checks: tuple[Check, ...]


@dataclass(frozen=True)
class Verdict:
    """The gates an observation fails, in gate order, with the first failing check's reason."""

    failures: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def flags(self) -> tuple[str, ...]:
        return tuple(self.failures)


PASSED = Verdict()


def judge(gates: tuple[Gate, ...], subject: CheckInput) -> Verdict:
    """Run every gate (a gate stops at its first failing check)."""
    failures: dict[str, str] = {}
    for gate in gates:
        for check in gate.checks:
            reason = check(subject)
            if reason is not None:
                failures[gate.flag] = reason
                break
    return Verdict(failures) if failures else PASSED


def check_input(tool: Tool, arguments: dict[str, Any], value: Any) -> CheckInput:
    return CheckInput(tool, arguments, value, " \n ".join(_leaves(value)))


def _leaves(value: Any) -> Iterator[str]:
    """Strings and numbers, depth first (keys are structure, not content)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int | float):
        yield str(value)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
