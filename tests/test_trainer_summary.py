"""GRPO run summaries and paired comparisons of evaluated runs (what the pipeline reports)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolsim_trainer.stats import paired_bootstrap_diff
from toolsim_trainer.summary import compare_runs, format_comparisons, grpo_summary


def write_metrics(run_dir: Path, rows: list[dict[str, object]]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def test_grpo_summary_reads_first_and_last_windows(tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [
        {"step": s, "reward": float(s), "frac_reward_zero_std": 0.5 if s % 2 else 0.0}
        for s in range(1, 41)
    ]
    rows.append({"step": 40, "train_runtime": 12.0, "train_loss": 0.1})  # the final line
    rows.insert(3, {"step": 3, "eval_loss": 1.0})  # not a training step
    out = grpo_summary(write_metrics(tmp_path / "run", rows), window=20)
    assert out["steps"] == 40 and out["window"] == 20
    assert out["reward_first"] == pytest.approx(sum(range(1, 21)) / 20)
    assert out["reward_last"] == pytest.approx(sum(range(21, 41)) / 20)
    assert out["frac_reward_zero_std"] == pytest.approx(0.25)


def test_grpo_summary_halves_a_short_run_and_keeps_a_resumed_steps_last_line(
    tmp_path: Path,
) -> None:
    rows: list[dict[str, object]] = [{"step": s, "reward": 0.0} for s in range(1, 7)]
    rows += [{"step": 5, "reward": 1.0}, {"step": 6, "reward": 1.0}]  # resumed at step 4
    out = grpo_summary(write_metrics(tmp_path / "run", rows))
    assert out["steps"] == 6 and out["window"] == 3
    assert out["reward_first"] == 0.0 and out["reward_last"] == pytest.approx(2 / 3)


def test_grpo_summary_of_a_run_without_steps_names_the_run(tmp_path: Path) -> None:
    run = write_metrics(tmp_path / "sft-run", [{"step": 1, "loss": 1.2}])
    with pytest.raises(ValueError, match="sft-run"):
        grpo_summary(run)


def test_paired_difference_tells_apart_what_the_unpaired_intervals_cannot() -> None:
    # b solves the same questions as a plus 8 more of 100: a small, consistent gain
    a = [1.0] * 30 + [0.0] * 70
    b = [1.0] * 38 + [0.0] * 62
    mean, low, high = paired_bootstrap_diff(b, a)
    assert mean == pytest.approx(0.08)
    assert 0.0 < low < 0.08 < high
    with pytest.raises(ValueError, match="equal lengths"):
        paired_bootstrap_diff([1.0], [1.0, 0.0])


def results_file(
    path: Path, run: str, ems: dict[str, float], failed: frozenset[str] = frozenset()
) -> Path:
    lines = [
        json.dumps(
            {
                "run": run,
                "benchmark": "heldout",
                "id": qid,
                "status": "failed" if qid in failed else "answered",
                "em": em,
                "f1": em,
            }
        )
        for qid, em in ems.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_compare_runs_pairs_questions_by_id_and_leaves_failed_ones_out(tmp_path: Path) -> None:
    ids = [f"q{i}" for i in range(40)]
    sft = results_file(tmp_path / "sft.jsonl", "sft", {q: 0.0 for q in ids})
    grpo = results_file(
        tmp_path / "grpo.jsonl",
        "grpo",
        {q: 1.0 if i < 20 else 0.0 for i, q in enumerate(ids)},
        failed=frozenset({"q0"}),
    )
    (c,) = compare_runs([sft, grpo], [("grpo", "sft"), ("grpo", "control")])
    assert (c.run, c.baseline, c.benchmark, c.n) == ("grpo", "sft", "heldout", 39)
    assert c.em_diff[0] == pytest.approx(19 / 39)  # q0 (a solved one) failed: out of both
    assert c.verdict == "better"
    assert "grpo - sft (n=39): EM +0.487" in format_comparisons([c])
    (same,) = compare_runs([sft, sft], [("sft", "sft")])
    assert same.verdict == "not told apart"
