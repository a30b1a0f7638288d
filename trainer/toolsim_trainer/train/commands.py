"""The ``toolsim train sft|rm|grpo`` entry points, importable without TRL or torch.

``toolsim --help`` mounts every command's parser; importing a stage module pulls in TRL,
transformers and torch (over ten seconds on a small machine). These objects add the shared
``--config``/``--set`` arguments and import their stage only when the command runs.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from pathlib import Path


def shipped_config(name: str) -> Path:
    """A config shipped in ``trainer/configs/`` (next to the package in the source tree)."""
    return Path(__file__).resolve().parents[2] / "configs" / name


def add_config_arguments(parser: argparse.ArgumentParser, default_config: str | None) -> None:
    """``--config FILE.yaml`` and repeatable ``--set key=value``, the same for every stage."""
    parser.add_argument(
        "--config",
        default=default_config,
        help="YAML file of config fields (see trainer/configs/)"
        + (f"; default {default_config}" if default_config else ""),
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config field (value read as YAML); repeatable",
    )


@dataclass(frozen=True)
class StageCommand:
    """A training stage as a CLI command: ``module.command(args)`` runs it."""

    module: str
    default_config: str

    def configure_parser(self, p: argparse.ArgumentParser) -> None:
        add_config_arguments(p, str(shipped_config(self.default_config)))
        p.set_defaults(func=self.command)

    def command(self, args: argparse.Namespace) -> int:
        code: int = importlib.import_module(self.module).command(args)
        return code


sft = StageCommand("toolsim_trainer.train.sft", "sft-cpu-demo.yaml")
rm = StageCommand("toolsim_trainer.train.rm", "rm-cpu-demo.yaml")
grpo = StageCommand("toolsim_trainer.train.grpo", "grpo-cpu-demo.yaml")
