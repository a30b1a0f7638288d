"""``toolsim plot RUN_DIR...``: training curves of one or more runs as one PNG.

It plots whatever numeric keys the runs' ``metrics.jsonl`` hold, so SFT, reward-model and GRPO
runs share one command: keys with the same unit share a panel (``rewards/<name>/mean`` of every
reward component, ``timing/*`` for the step-time split, policy-token lengths, a metric and its
``eval_`` twin) and every other key gets its own. One line per run (and per key in shared panels).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolsim_trainer.train.layout import METRICS_FILE

# Bookkeeping, not curves: the x axis, and Trainer's one-off end-of-training summary.
SKIPPED_KEYS = frozenset(
    {
        "step",
        "epoch",
        "time",
        "total_flos",
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "train_loss",
        "eval_runtime",
        "eval_samples_per_second",
        "eval_steps_per_second",
    }
)
# Panels a reader looks for first, in this order; the rest follow alphabetically.
PANEL_ORDER = (
    "loss",
    "rewards (mean)",
    "reward",
    "rewards (std)",
    "tools",
    "kl",
    "entropy",
    "policy-token lengths",
    "timing",
    "learning_rate",
    "grad_norm",
)


@dataclass
class Series:
    """One curve: a run's values of one key against the global step."""

    run: str
    key: str
    steps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


def panel_of(key: str) -> str:
    """The panel a metric key is drawn in; keys in one panel share a unit."""
    base = key.removeprefix("eval_")
    parts = base.split("/")
    if parts[0] == "rewards" and len(parts) == 3 and parts[2] in ("mean", "std"):
        return f"rewards ({parts[2]})"
    if parts[0] == "rewards" and len(parts) == 2:
        return "rewards (mean)"
    if parts[0] == "timing":
        return "timing"
    if parts[0] == "completions" and "length" in base:
        return "policy-token lengths"
    if parts[0] == "tools" and ("rate" in base or "frac" in base or "ratio" in base):
        return "tools"
    return base


def read_series(run_dir: Path, run_name: str) -> list[Series]:
    """Every numeric key of a run's metrics as a curve; a broken line names its file and line."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a toolsim training run?")
    curves: dict[str, Series] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        record = _parse_line(line, path, number)
        step = record.get("step", number)
        for key, value in record.items():
            if key in SKIPPED_KEYS or not _is_number(value) or not _is_number(step):
                continue
            curve = curves.setdefault(key, Series(run=run_name, key=key))
            curve.steps.append(float(step))
            curve.values.append(float(value))
    return list(curves.values())


def _parse_line(line: str, path: Path, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{number}: not a JSON line ({exc.msg})") from exc
    if not isinstance(record, dict):
        raise ValueError(f"{path}:{number}: expected a JSON object per line")
    return record


def _is_number(value: Any) -> bool:
    is_real = isinstance(value, int | float) and not isinstance(value, bool)
    return is_real and math.isfinite(value)


def group_panels(series: Iterable[Series]) -> dict[str, list[Series]]:
    """Curves by panel, panels in reading order (known ones first, then alphabetical)."""
    panels: dict[str, list[Series]] = {}
    for curve in series:
        panels.setdefault(panel_of(curve.key), []).append(curve)
    rank = {name: i for i, name in enumerate(PANEL_ORDER)}
    ordered = sorted(panels, key=lambda name: (rank.get(name, len(rank)), name))
    return {name: panels[name] for name in ordered}


def run_names(run_dirs: Sequence[Path]) -> list[str]:
    """Short unique labels: folder names, or the full paths when two runs share a name."""
    names = [d.name or str(d) for d in run_dirs]
    return names if len(set(names)) == len(names) else [str(d) for d in run_dirs]


def plot_runs(run_dirs: Sequence[str | Path], out_path: str | Path, columns: int = 3) -> Path:
    """Render the curves of ``run_dirs`` into one PNG at ``out_path`` and return its path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training machines
    import matplotlib.pyplot as plt

    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise ValueError("plot_runs needs at least one run folder")
    series = [
        s for d, name in zip(dirs, run_names(dirs), strict=True) for s in read_series(d, name)
    ]
    panels = group_panels(series)
    if not panels:
        raise ValueError(f"no numeric metrics in {', '.join(map(str, dirs))}: nothing to plot")
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.0 * columns, 3.2 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, (title, curves) in zip(flat, panels.items(), strict=False):
        _draw_panel(ax, title, curves, several_runs=len(dirs) > 1)
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _draw_panel(ax: Any, title: str, curves: list[Series], several_runs: bool) -> None:
    shared = len({c.key for c in curves}) > 1
    for curve in curves:
        parts = [curve.run] if several_runs else []
        parts += [curve.key] if shared else []
        marker = "o" if len(curve.steps) < 3 else None  # a one-off value (held-out accuracy) shows
        ax.plot(curve.steps, curve.values, marker=marker, label=" ".join(parts) or curve.key)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if shared or several_runs:
        ax.legend(fontsize="x-small")


def configure_parser(p: argparse.ArgumentParser) -> None:
    """``toolsim plot RUN_DIR... [-o FILE.png]``."""
    p.add_argument("run_dirs", nargs="+", type=Path, help="training run folders (metrics.jsonl)")
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        default=None,
        help="PNG to write (default <first RUN_DIR>/curves.png)",
    )
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    """Write the PNG and print its path (the only stdout line, so scripts can capture it)."""
    out = args.out or Path(args.run_dirs[0]) / "curves.png"
    print(plot_runs(args.run_dirs, out))
    return 0
