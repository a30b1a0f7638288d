"""The trainer's commands under ``toolsim``: traces, eval, train, plot, pipeline.

Each command module exposes ``configure_parser(parser)`` and ``command(args) -> int``; this
module only mounts them, so ``toolsim --help`` stays fast (heavy imports such as TRL happen
inside ``command``).
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

# (command path, module, help)
COMMANDS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("traces", "generate"), "toolsim_trainer.traces.cli:generate", "AutoAgent: write traces"),
    (("traces", "score"), "toolsim_trainer.traces.cli:score", "AutoTraj: score traces"),
    (("traces", "repair"), "toolsim_trainer.traces.cli:repair", "AutoTraj: repair, export"),
    (("traces", "export"), "toolsim_trainer.traces.cli:export", "SFT + preference datasets"),
    (("eval",), "toolsim_trainer.evaluate", "EM/F1 of a policy on question sets"),
    (("train", "sft"), "toolsim_trainer.train.commands:sft", "Stage 1: SFT (TRL + LoRA)"),
    (("train", "rm"), "toolsim_trainer.train.commands:rm", "AutoTraj trajectory reward model"),
    (
        ("train", "grpo"),
        "toolsim_trainer.train.commands:grpo",
        "Stage 2: GRPO (rollouts over HTTP)",
    ),
    (("plot",), "toolsim_trainer.plot", "training curves of run folders to PNG"),
    (("pipeline",), "toolsim_trainer.pipeline", "traces -> SFT -> GRPO -> eval, one command"),
)


def register(commands: Any) -> None:
    """Mount every trainer command on ``commands`` (an argparse subparsers object)."""
    groups: dict[str, Any] = {}
    for path, target, help_ in COMMANDS:
        parent = commands
        if len(path) == 2:
            if path[0] not in groups:
                group = commands.add_parser(path[0], help=f"{path[0]} commands")
                groups[path[0]] = group.add_subparsers(required=True, metavar="ACTION")
            parent = groups[path[0]]
        parser = parent.add_parser(path[-1], help=help_, description=help_)
        module = _module(target)
        module.configure_parser(parser)
        parser.set_defaults(func=module.command)


def _module(target: str) -> Any:
    """``pkg.mod`` or ``pkg.mod:attr`` (an object with configure_parser/command)."""
    name, _, attr = target.partition(":")
    module = importlib.import_module(name)
    return getattr(module, attr) if attr else module


def main(argv: list[str] | None = None) -> int:
    """``python -m toolsim_trainer.cli``: the same commands without the services'."""
    parser = argparse.ArgumentParser(prog="toolsim")
    register(parser.add_subparsers(required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code
