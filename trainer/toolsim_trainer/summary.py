"""What a pipeline run learned, in numbers: GRPO training curves reduced to a few figures and
paired comparisons between evaluated runs.

``grpo_summary`` reads a GRPO run's ``metrics.jsonl`` (TRL's log lines plus ours) and reports
the mean reward of the first and last ``window`` steps, the share of groups whose rewards were
all equal (``frac_reward_zero_std``: those groups give no gradient with ``beta=0``) and the mean
tool calls per rollout. ``compare_runs`` pairs two runs' per-question results on one benchmark
(the same question ids) and bootstraps the difference, which is what "GRPO beats SFT" needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolsim_trainer.eval_results import read_results
from toolsim_trainer.stats import paired_bootstrap_diff
from toolsim_trainer.train.layout import read_metrics


def _step_rows(metrics: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One row per optimisation step: TRL's per-step logs carry ``reward``; the final summary
    line (``train_runtime``...) and evaluation lines do not."""
    rows: dict[int, Mapping[str, Any]] = {}
    for row in metrics:
        if "reward" in row and "train_runtime" not in row:
            rows[int(row.get("step", len(rows) + 1))] = row  # a resumed run rewrites a step
    return [rows[k] for k in sorted(rows)]


def _mean_of(rows: Sequence[Mapping[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in rows if isinstance(r.get(key), int | float)]
    return sum(values) / len(values) if values else math.nan


def grpo_summary(run_dir: str | Path, window: int = 20) -> dict[str, Any]:
    """First/last-``window``-step reward, ``frac_reward_zero_std`` and tool use of a GRPO run.

    With fewer than ``2 * window`` steps the windows are the first and last halves, and
    ``window`` in the result says how many steps each mean covers."""
    steps = _step_rows(read_metrics(run_dir))
    if not steps:
        raise ValueError(f"{run_dir}: metrics.jsonl has no GRPO step with a 'reward'")
    w = min(window, max(1, len(steps) // 2))
    return {
        "steps": len(steps),
        "window": w,
        "reward_first": _mean_of(steps[:w], "reward"),
        "reward_last": _mean_of(steps[-w:], "reward"),
        "frac_reward_zero_std": _mean_of(steps, "frac_reward_zero_std"),
        "tool_calls_per_rollout": _mean_of(steps, "tools/calls_per_rollout"),
        "tool_failure_rate": _mean_of(steps, "tools/failure_rate"),
    }


@dataclass(frozen=True)
class Comparison:
    benchmark: str
    run: str
    baseline: str
    n: int
    """Questions scored in both runs."""
    em_diff: tuple[float, float, float]
    """Mean EM(run) - EM(baseline) and its 95% paired-bootstrap interval."""
    f1_diff: tuple[float, float, float]

    @property
    def verdict(self) -> str:
        """``better``/``worse`` when the EM interval excludes 0, else ``not told apart``."""
        _, low, high = self.em_diff
        return "better" if low > 0 else "worse" if high < 0 else "not told apart"


def compare_runs(paths: Iterable[str | Path], pairs: Sequence[tuple[str, str]]) -> list[Comparison]:
    """For each ``(run, baseline)`` and each benchmark both were evaluated on, the paired
    difference over the questions both scored (failed questions are left out of both)."""
    by_key: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for path in paths:
        for r in read_results(Path(path)):
            if r["status"] != "failed":
                by_key.setdefault((r["run"], r["benchmark"]), {})[r["id"]] = r
    out: list[Comparison] = []
    benchmarks = sorted({bench for _, bench in by_key})
    for run, baseline in pairs:
        for bench in benchmarks:
            a, b = by_key.get((run, bench)), by_key.get((baseline, bench))
            if not a or not b:
                continue
            ids = sorted(a.keys() & b.keys())
            if not ids:
                continue
            out.append(
                Comparison(
                    benchmark=bench,
                    run=run,
                    baseline=baseline,
                    n=len(ids),
                    em_diff=paired_bootstrap_diff(
                        [float(a[i]["em"]) for i in ids], [float(b[i]["em"]) for i in ids]
                    ),
                    f1_diff=paired_bootstrap_diff(
                        [float(a[i]["f1"]) for i in ids], [float(b[i]["f1"]) for i in ids]
                    ),
                )
            )
    return out


def format_comparisons(comparisons: Sequence[Comparison]) -> str:
    """One line per comparison: ΔEM and ΔF1 with their intervals and the verdict."""
    lines = []
    for c in comparisons:
        em, em_lo, em_hi = c.em_diff
        f1, f1_lo, f1_hi = c.f1_diff
        lines.append(
            f"{c.benchmark}: {c.run} - {c.baseline} (n={c.n}): "
            f"EM {em:+.3f} [{em_lo:+.3f}, {em_hi:+.3f}], "
            f"F1 {f1:+.3f} [{f1_lo:+.3f}, {f1_hi:+.3f}]: {c.verdict}"
        )
    return "\n".join(lines)
