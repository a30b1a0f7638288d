"""``toolsim pipeline`` end to end at toy size: split -> gold traces -> SFT -> GRPO -> eval ->
report, with a real ToolActor process and the packaged model, then resumed from its markers.

The demo (``make demo``) is this with real step counts; here every stage runs one step so the
test checks the wiring, the held-out split and the report, not learning.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import packaged_model_dir
from toolsim_trainer.pipeline import Pipeline, PipelineConfig

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "context"
TINY_LORA = {"lora_r": 2, "lora_alpha": 4, "lora_target_modules": ["q_proj", "v_proj"]}

pytestmark = [pytest.mark.slow, pytest.mark.train]


def tiny_config(out: Path) -> PipelineConfig:
    model = str(packaged_model_dir())
    return PipelineConfig(
        output_dir=str(out),
        questions=[str(DATA / "hotpotqa_train.json"), str(DATA / "musique_train.json")],
        questions_limit=3,
        val_fraction=0.5,
        corpora=[str(DATA / "hotpotqa_train_corpus.json")],
        trace_tools="mixed",  # as the demo: gold traces on simulated and on live search
        grpo_questions=1,  # as the demo: GRPO on a train question that was never traced
        runs=["base", "sft", "grpo"],
        eval_limits={"max_turns": 2, "max_tool_calls": 1, "max_tokens": 32},
        eval_concurrency=2,
        sft={
            "model_path": model,
            "max_steps": 1,
            "per_device_train_batch_size": 1,
            "max_length": 512,
            "bf16": False,
            "save_strategy": "no",
            "report_to": [],
            **TINY_LORA,
        },
        grpo={
            "model_path": model,
            "max_steps": 1,
            "num_generations": 2,
            "per_device_train_batch_size": 2,
            "max_completion_length": 64,
            "max_turns": 2,
            "max_tool_calls": 1,
            "tool_budget": 1,
            "overlong_buffer": 16,
            "bf16": False,
            "use_cpu": True,
            "save_strategy": "no",
            "report_to": [],
        },
    )


def test_tiny_pipeline_runs_every_stage_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    report = Pipeline(tiny_config(out)).run()

    train = [json.loads(line) for line in (out / "split" / "train.jsonl").open()]
    heldout = [json.loads(line) for line in (out / "split" / "heldout.jsonl").open()]
    grpo_only = [json.loads(line) for line in (out / "split" / "grpo.jsonl").open()]
    assert len(train) == len(heldout) == 3
    assert grpo_only == train[-1:]
    for mode in ("simulated", "live"):  # held-out and GRPO questions are never traced
        lines = (out / "traces" / f"traces-{mode}.jsonl").open()
        traced = [json.loads(line) for line in lines]
        assert {t["question"] for t in traced} == {r["question"] for r in train[:-1]}, mode
        assert len({t["toolset_id"] for t in traced}) == 1, mode
    grpo_config = (out / "grpo" / "run" / "resolved_config.yaml").read_text()
    assert "split/grpo.jsonl" in grpo_config
    traces = json.loads((out / "traces" / "done.json").read_text())
    assert traces["trace_tools"] == ["simulated", "live"]
    for stage in ("split", "traces", "sft", "grpo", "eval/base", "eval/sft", "eval/grpo"):
        assert (out / stage / "done.json").is_file(), stage
    assert (out / "sft" / "run" / "final" / "adapter_config.json").is_file()
    assert json.loads((out / "grpo" / "done.json").read_text())["training"]["steps"] == 1

    text = report.read_text()
    table = [line.split() for line in text.splitlines()]
    rows = {tuple(cells[:2]) for cells in table if cells and cells[0] == "heldout"}
    assert rows == {("heldout", "base"), ("heldout", "sft"), ("heldout", "grpo")}, text
    assert "sft - base (n=3)" in text and "grpo - sft (n=3)" in text
    assert "- grpo: 1 steps" in text
    assert (out / "report.png").stat().st_size > 0

    assert "- all stages: " in text
    results = out / "eval" / "grpo" / "heldout.jsonl"
    lines_before = results.read_text().count("\n")
    # the same command with the control run added (`make demo-controls`): every finished stage
    # is skipped, nothing is appended twice, only the new run is trained and evaluated
    again = subprocess.run(
        [sys.executable, "-c", RERUN, str(out)], capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-2000:]
    ran = [line for line in again.stdout.splitlines() if line.startswith("== ")]
    assert ran == ["== control", "== eval/control"], again.stdout[-2000:]
    assert results.read_text().count("\n") == lines_before
    assert "grpo - control (n=3)" in report.read_text()


RERUN = """
import sys
from pathlib import Path
sys.path.insert(0, str(Path.cwd()))
from tests.test_trainer_pipeline import tiny_config
from toolsim_trainer.pipeline import Pipeline
config = tiny_config(Path(sys.argv[1]))
config.runs.append("control")
Pipeline(config).run()
"""


def test_pipeline_overrides_read_numbers_as_people_write_them() -> None:
    """``--set grpo.learning_rate=3e-4`` is a float (PyYAML's YAML 1.1 would read a string and
    the trainer would fail deep inside with a TypeError)."""
    config = PipelineConfig.from_yaml(
        Path(__file__).resolve().parents[1] / "trainer" / "configs" / "cpu-demo.yaml",
        ["grpo.learning_rate=3e-4", "sft.max_steps=7", "seed=2", "grpo.beta=-1E-2"],
    )
    assert config.grpo["learning_rate"] == pytest.approx(3e-4)
    assert isinstance(config.grpo["learning_rate"], float)
    assert config.grpo["beta"] == pytest.approx(-0.01)
    assert config.sft["max_steps"] == 7 and config.seed == 2
