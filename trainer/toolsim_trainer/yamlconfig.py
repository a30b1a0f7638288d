"""YAML as people write configs, for every config file and ``--set`` value of the trainer.

PyYAML follows YAML 1.1, where ``1e-3`` and ``3e-4`` are strings (only ``1.0e-3`` is a float):
a learning rate written the usual way would reach the trainer as text. Here both are floats.
Kept free of torch/TRL imports, so the pipeline's CLI can parse its config before loading them.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus exponent floats without a dot (``1e-3``)."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """One YAML document or scalar, read with the config rules above."""
    return yaml.load(text, Loader=ConfigLoader)
