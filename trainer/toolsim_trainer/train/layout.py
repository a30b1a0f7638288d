"""The names inside a training run folder, importable without torch (``toolsim plot`` reads
runs on machines that never train)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESOLVED_CONFIG = "resolved_config.yaml"
"""The config that ran, after validation; ``--config`` accepts it to resume or repeat a run."""
METRICS_FILE = "metrics.jsonl"
"""One JSON object per Trainer log (``step``, ``epoch``, ``time`` and the logged keys)."""
FINAL_DIR = "final"
"""The adapter and tokenizer of the finished run."""


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every line of a run's ``metrics.jsonl``; a missing file is an error naming the run."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a toolsim training run?")
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]
