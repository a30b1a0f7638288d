"""``toolsim plot``: which keys share a panel, one line per run, the PNG, and errors that name
the file."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pytest

from toolsim_trainer import plot
from toolsim_trainer.plot import group_panels, panel_of, plot_runs, read_series


def grpo_like_metrics(run: Path, steps: int, offset: float = 0.0) -> Path:
    """Metric lines shaped like TRL's GRPO logs plus our tools/* and timing/* keys."""
    run.mkdir(parents=True)
    lines: list[dict[str, Any]] = []
    for step in range(1, steps + 1):
        lines.append(
            {
                "step": step,
                "epoch": step / steps,
                "time": 1.0e9 + step,
                "loss": 1.0 / step + offset,
                "learning_rate": 1e-5,
                "grad_norm": 0.5,
                "reward": 0.1 * step,
                "reward_std": 0.2,
                "rewards/answer_f1/mean": 0.1 * step,
                "rewards/answer_f1/std": 0.3,
                "rewards/format/mean": 0.9,
                "rewards/format/std": 0.1,
                "rewards/reward_model/mean": -0.5 + 0.05 * step,
                "tools/calls_per_rollout": 2.0,
                "tools/failure_rate": 0.05,
                "tools/cache_hit_rate": 0.4 + 0.01 * step,
                "kl": 0.01 * step,
                "entropy": 1.2,
                "completions/mean_length": 120.0,
                "completions/max_length": 300.0,
                "completions/clipped_ratio": 0.0,
                "timing/rollout_s": 30.0,
                "timing/tools_s": 5.0,
                "timing/train_s": 12.0,
                "num_tokens": 1000.0 * step,
                "flag": True,  # not a number to plot
                "note": "text",
            }
        )
    lines.append({"step": steps, "train_runtime": 100.0, "train_loss": 0.5, "total_flos": 1e12})
    lines.append({"step": steps, "heldout/pairwise_accuracy": 0.75, "eval_loss": 0.9})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + "\n")
    return run


def test_keys_with_one_unit_share_a_panel() -> None:
    assert panel_of("rewards/answer_f1/mean") == panel_of("rewards/format/mean") == "rewards (mean)"
    assert panel_of("rewards/format/std") == "rewards (std)"
    assert panel_of("timing/rollout_s") == panel_of("timing/train_s") == "timing"
    assert (
        panel_of("completions/mean_length")
        == panel_of("completions/max_length")
        == "policy-token lengths"
    )
    assert panel_of("completions/clipped_ratio") == "completions/clipped_ratio"
    assert panel_of("tools/failure_rate") == panel_of("tools/cache_hit_rate") == "tools"
    assert panel_of("tools/calls_per_rollout") == "tools/calls_per_rollout"  # a count, not a rate
    assert panel_of("eval_loss") == panel_of("loss") == "loss"
    assert panel_of("eval_accuracy") == "accuracy"


def test_series_and_panels_of_a_run(tmp_path: Path) -> None:
    run = grpo_like_metrics(tmp_path / "grpo", steps=4)
    series = {s.key: s for s in read_series(run, "grpo")}
    assert "flag" not in series and "note" not in series and "train_runtime" not in series
    assert "time" not in series and "epoch" not in series and "step" not in series
    assert series["loss"].steps == [1.0, 2.0, 3.0, 4.0]
    assert series["loss"].values == pytest.approx([1.0, 0.5, 1 / 3, 0.25])
    assert series["heldout/pairwise_accuracy"].values == [0.75]
    panels = group_panels(series.values())
    names = list(panels)
    assert names[:9] == [
        "loss",
        "rewards (mean)",
        "reward",
        "rewards (std)",
        "tools",
        "kl",
        "entropy",
        "policy-token lengths",
        "timing",
    ]
    assert {c.key for c in panels["rewards (mean)"]} == {
        "rewards/answer_f1/mean",
        "rewards/format/mean",
        "rewards/reward_model/mean",
    }
    assert {c.key for c in panels["loss"]} == {"loss", "eval_loss"}
    assert names[9:11] == ["learning_rate", "grad_norm"]
    assert names[11:] == sorted(names[11:]) and "heldout/pairwise_accuracy" in names[11:]


def test_plot_runs_writes_one_png_with_a_panel_per_group(tmp_path: Path) -> None:
    import matplotlib.image

    first = grpo_like_metrics(tmp_path / "a" / "run", steps=5)
    second = grpo_like_metrics(tmp_path / "b" / "run", steps=3, offset=0.2)
    out = plot_runs([first, second], tmp_path / "out" / "curves.png", columns=3)
    assert out == tmp_path / "out" / "curves.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    panels = group_panels(read_series(first, "a"))
    height, width, _ = matplotlib.image.imread(out).shape
    assert (height, width) == (math.ceil(len(panels) / 3) * 320, 1500)  # 3.2 x 5 inches at 100 dpi
    assert plot.run_names([first, second]) == [str(first), str(second)]  # same folder names
    assert plot.run_names([tmp_path / "sft", tmp_path / "grpo"]) == ["sft", "grpo"]


def test_missing_or_broken_metrics_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"metrics.jsonl does not exist: is .* a toolsim training run"
    ):
        plot_runs([tmp_path], tmp_path / "x.png")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": \n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON line"):
        plot_runs([tmp_path], tmp_path / "x.png")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "note": "only text"}\n')
    with pytest.raises(ValueError, match="no numeric metrics"):
        plot_runs([tmp_path], tmp_path / "x.png")
    with pytest.raises(ValueError, match="at least one run folder"):
        plot_runs([], tmp_path / "x.png")


def test_command_writes_next_to_the_first_run_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = grpo_like_metrics(tmp_path / "sft", steps=2)
    parser = argparse.ArgumentParser()
    plot.configure_parser(parser)
    args = parser.parse_args([str(run)])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str(run / "curves.png")
    assert (run / "curves.png").stat().st_size > 10_000
    args = parser.parse_args([str(run), "-o", str(tmp_path / "other.png")])
    assert args.func(args) == 0 and (tmp_path / "other.png").is_file()
