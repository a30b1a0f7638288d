"""The names inside a training run folder, importable without torch (``toolsim plot`` reads
runs on machines that never train)."""

RESOLVED_CONFIG = "resolved_config.yaml"
"""The config that ran, after validation; ``--config`` accepts it to resume or repeat a run."""
METRICS_FILE = "metrics.jsonl"
"""One JSON object per Trainer log (``step``, ``epoch``, ``time`` and the logged keys)."""
FINAL_DIR = "final"
"""The adapter and tokenizer of the finished run."""
