"""Shared training-run plumbing: config files and --set overrides, the run folder, metrics
lines, checkpoints to resume from, LoRA settings, dataset reading, the light CLI entry."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from tests.conftest import packaged_model_dir
from tests.test_trainer_sft import search_traces, sft_row, write_jsonl
from toolsim_trainer.data import DatasetError
from toolsim_trainer.train.common import (
    RESOLVED_CONFIG,
    ConfigError,
    LoraFields,
    MetricsCallback,
    build_lora_config,
    config_to_dict,
    last_checkpoint,
    load_config,
    parse_overrides,
    prepare_run_dir,
    read_jsonl_rows,
    read_metrics,
    resume_point,
    split_count,
    validate_lora,
)
from toolsim_trainer.train.sft import ToolsimSFTConfig

CONFIGS = Path(__file__).resolve().parents[1] / "trainer" / "configs"


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "sft.jsonl", [sft_row(t) for t in search_traces()])


def _base(dataset: Path, tmp_path: Path) -> list[str]:
    return [
        f"dataset_path={dataset}",
        f"output_dir={tmp_path / 'run'}",
        f"model_path={packaged_model_dir()}",
    ]


def test_overrides_are_read_as_yaml_values() -> None:
    parsed = parse_overrides(
        [
            "lora_r=8",
            "bf16=false",
            "learning_rate=1e-3",
            "warmup_steps=0.03",
            "lora_target_modules=[q_proj, v_proj]",
            "run_name=a=b",
            "seed=",
        ]
    )
    assert parsed == {
        "lora_r": 8,
        "bf16": False,
        "learning_rate": 0.001,  # YAML 1.1 would read "1e-3" as a string
        "warmup_steps": 0.03,
        "lora_target_modules": ["q_proj", "v_proj"],
        "run_name": "a=b",
        "seed": None,
    }
    with pytest.raises(
        ConfigError, match=r"--set expects key=value, got 'lora_r' \(e\.g\. --set max_steps=10\)"
    ):
        parse_overrides(["lora_r"])
    with pytest.raises(ConfigError, match="the value is not valid YAML"):
        parse_overrides(["lora_target_modules=[q_proj"])


def test_file_then_overrides(dataset: Path, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("lora_r: 16\nmax_steps: 5\nlearning_rate: 2.0e-4\n")
    config = load_config(ToolsimSFTConfig, path, [*_base(dataset, tmp_path), "max_steps=7"])
    assert (config.lora_r, config.max_steps, config.learning_rate) == (16, 7, 2e-4)
    assert config.output_dir == str(tmp_path / "run")


def test_unknown_keys_are_rejected_with_the_valid_ones(dataset: Path, tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("lora_rank: 4\n")
    with pytest.raises(ConfigError) as caught:
        load_config(ToolsimSFTConfig, path, [*_base(dataset, tmp_path), "max_step=3"])
    message = str(caught.value)
    assert (
        f"unknown ToolsimSFTConfig key(s) in {path}: 'lora_rank' (did you mean 'local_rank' or 'lora_r'?), 'max_step' (did you mean 'max_steps' or"
        in message
    )
    valid = message.split("Valid keys: ")[1].split(", ")
    assert {
        "dataset_path",
        "eval_fraction",
        "lora_r",
        "lora_target_modules",
        "max_steps",
        "model_path",
    } <= set(valid)
    assert "_n_gpu" not in valid  # not an init field


@pytest.mark.parametrize(
    ("text", "message"),
    [("- a\n- b\n", "must hold a mapping"), ("a: [1\n", "is not valid YAML")],
)
def test_bad_config_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(ToolsimSFTConfig, path, [])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(ToolsimSFTConfig, tmp_path / "missing.yaml", [])


@pytest.mark.parametrize("name", ["sft-cpu-demo.yaml", "rm-cpu-demo.yaml"])
def test_shipped_cpu_configs_are_valid(name: str, dataset: Path, tmp_path: Path) -> None:
    from toolsim_trainer.train.rm import ToolsimRewardConfig

    cls = ToolsimSFTConfig if name.startswith("sft") else ToolsimRewardConfig
    config = load_config(cls, CONFIGS / name, [f"dataset_path={dataset}"])
    assert config.per_device_train_batch_size == 2 and 4 <= config.lora_r <= 8
    assert config.max_length is not None and config.max_length <= 768
    assert config.bf16 is False and config.activation_checkpointing is False
    assert config.report_to == ["tensorboard"] and config.logging_steps == 1


def test_bf16_defaults_to_what_the_hardware_has(dataset: Path, tmp_path: Path) -> None:
    import torch

    config = load_config(ToolsimSFTConfig, None, _base(dataset, tmp_path))
    assert config.bf16 is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    assert (
        load_config(
            ToolsimSFTConfig, None, [*_base(dataset, tmp_path), "fp16=false", "bf16=false"]
        ).bf16
        is False
    )


def test_run_dir_records_a_reloadable_config(dataset: Path, tmp_path: Path) -> None:
    config = load_config(
        ToolsimSFTConfig,
        None,
        [*_base(dataset, tmp_path), "lora_r=4", "eos_token=<|im_end|>", "hub_token=secret"],
    )
    run = prepare_run_dir(config)
    text = (run / RESOLVED_CONFIG).read_text()
    assert "secret" not in text and "hub_token" not in text
    reloaded = load_config(ToolsimSFTConfig, run / RESOLVED_CONFIG, [])
    assert config_to_dict(reloaded) == config_to_dict(config)
    assert reloaded.eos_token == "<|im_end|>"  # TrainingArguments.to_dict would mask it


def test_metrics_callback_appends_one_line_per_log(tmp_path: Path) -> None:
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    state = TrainerState()
    callback = MetricsCallback()
    for step, loss in ((1, 2.5), (2, 2.0)):
        state.global_step, state.epoch = step, step / 4
        callback.on_log(args, state, TrainerControl(), logs={"loss": loss, "learning_rate": 1e-4})
    callback.on_log(args, state, TrainerControl(), logs={})
    state.is_world_process_zero = False  # other ranks of a multi-GPU run write nothing
    callback.on_log(args, state, TrainerControl(), logs={"loss": 9.0})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    records = read_metrics(tmp_path)
    assert [(r["step"], r["epoch"], r["loss"]) for r in records] == [(1, 0.25, 2.5), (2, 0.5, 2.0)]
    assert all(isinstance(r["time"], float) for r in records)
    with pytest.raises(FileNotFoundError, match=r"is .* a toolsim training run"):
        read_metrics(tmp_path / "elsewhere")


def test_last_checkpoint_is_the_highest_step(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert last_checkpoint(run) is None  # no folder yet: a fresh run
    run.mkdir()
    assert last_checkpoint(run) is None
    for step in (9, 10, 2):
        (run / f"checkpoint-{step}").mkdir()
    (run / "checkpoint-99").write_text("a file, not a checkpoint")
    assert last_checkpoint(run) == str(run / "checkpoint-10")
    config = load_config(ToolsimSFTConfig, None, _base(dataset, tmp_path))
    assert resume_point(config) == str(run / "checkpoint-10")
    explicit = load_config(
        ToolsimSFTConfig,
        None,
        [*_base(dataset, tmp_path), f"resume_from_checkpoint={run / 'checkpoint-2'}"],
    )
    assert resume_point(explicit) == str(run / "checkpoint-2")
    missing = load_config(
        ToolsimSFTConfig, None, [*_base(dataset, tmp_path), "resume_from_checkpoint=/nope"]
    )
    with pytest.raises(
        ConfigError, match="resume_from_checkpoint=/nope is not a checkpoint folder"
    ):
        resume_point(missing)


def test_lora_config_from_fields() -> None:
    fields = LoraFields(
        lora_r=4, lora_alpha=8, lora_dropout=0.1, lora_target_modules=["q_proj", "v_proj"]
    )
    lora = build_lora_config(fields, "SEQ_CLS", modules_to_save=["score"])
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (4, 8, 0.1)
    assert set(lora.target_modules) == {"q_proj", "v_proj"} and lora.task_type == "SEQ_CLS"
    assert lora.modules_to_save == ["score"]
    assert build_lora_config(LoraFields(), "CAUSAL_LM").target_modules == "all-linear"
    with pytest.raises(ConfigError, match=r"lora_r must be > 0 \(got -2\); try --set lora_r=8"):
        validate_lora(LoraFields(lora_r=-2))


def test_jsonl_rows_name_the_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"messages": [], "tools": "[]"}\n\n{"messages": []}\n')
    with pytest.raises(
        DatasetError, match=rf"{path}:3: missing column 'tools' \(every row needs messages, tools\)"
    ):
        read_jsonl_rows(path, ["messages", "tools"])
    path.write_text('{"messages": [], "tools": "[]"}\nnot json\n')
    with pytest.raises(DatasetError, match=rf"{path}:2: not a JSON line"):
        read_jsonl_rows(path, ["messages"])
    path.write_text("\n")
    with pytest.raises(DatasetError, match="has no rows"):
        read_jsonl_rows(path, ["messages"])
    with pytest.raises(DatasetError, match="does not exist"):
        read_jsonl_rows(tmp_path / "none.jsonl", ["messages"])


def test_split_count_keeps_both_sides() -> None:
    assert [split_count(10, f, "eval_fraction") for f in (0.0, 0.01, 0.25)] == [0, 1, 2]
    with pytest.raises(ConfigError, match=r"eval_fraction=0\.5 holds out 1 of 1 rows"):
        split_count(1, 0.5, "eval_fraction")


def test_cli_entry_parses_config_and_sets_without_importing_torch() -> None:
    """``toolsim --help`` mounts these parsers; they must not pull in TRL or torch."""
    code = "import sys, toolsim_trainer.train.commands; print(sorted(m for m in ('torch', 'trl', 'transformers', 'peft') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "[]"
    from toolsim_trainer.train import commands

    parser = argparse.ArgumentParser()
    commands.sft.configure_parser(parser)
    args = parser.parse_args(["--set", "lora_r=4", "--set", "max_steps=2"])
    assert args.config == str(CONFIGS / "sft-cpu-demo.yaml") and Path(args.config).is_file()
    assert args.overrides == ["lora_r=4", "max_steps=2"]
    assert args.func == commands.sft.command
    assert (CONFIGS / commands.rm.default_config).is_file()


def test_config_to_dict_is_plain_yaml_data(dataset: Path, tmp_path: Path) -> None:
    config = load_config(ToolsimSFTConfig, None, _base(dataset, tmp_path))
    data = config_to_dict(config)
    assert data["eval_strategy"] == "no" and data["lr_scheduler_type"] == "linear"
    assert isinstance(data["accelerator_config"], dict)
    assert json.loads(json.dumps(data)) == data  # nothing but JSON/YAML types
