"""The trajectory reward model (AutoTraj, ``toolsim train rm``).

TRL's ``RewardTrainer`` on conversational preference pairs with a LoRA ``SEQ_CLS`` adapter and a
trained ``score`` head. Rows (JSONL): ``{"prompt": [messages], "chosen": [messages],
"rejected": [messages]}`` and optionally ``"tools"`` (a JSON string of the OpenAI tool list).
A slice of the pairs is held out; the share of held-out pairs whose chosen trajectory scores
higher is written to ``metrics.jsonl`` as ``heldout/pairwise_accuracy`` and printed.

GRPO adds the model's score to its reward through ``load_reward_scorer(run_dir)``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import torch
import yaml
from datasets import Dataset, load_dataset
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, TrainerCallback
from trl.trainer.reward_config import RewardConfig
from trl.trainer.reward_trainer import RewardTrainer

from toolsim_trainer.chat_template import load_tokenizer
from toolsim_trainer.data import DatasetError
from toolsim_trainer.train import commands
from toolsim_trainer.train.common import (
    FINAL_DIR,
    RESOLVED_CONFIG,
    ConfigError,
    LoraFields,
    MetricsCallback,
    append_metrics,
    build_lora_config,
    default_model_path,
    load_config,
    prepare_run_dir,
    read_jsonl_rows,
    read_metrics,
    resolve_bf16,
    resume_point,
    save_final,
    split_count,
    validate_heldout,
    validate_inputs,
    validate_lora,
)

RM_COLUMNS = ("prompt", "chosen", "rejected")
HELDOUT_ACCURACY = "heldout/pairwise_accuracy"

Messages = list[dict[str, Any]]
ToolList = list[dict[str, Any]] | str | None
"""A conversation's tools: the OpenAI tool list, its JSON string (as in data files), or none."""


class RewardScoreFn(Protocol):
    """Scores whole conversations (prompt + trajectory); higher means a better trajectory."""

    def __call__(
        self, conversations: Sequence[Messages], tools: Sequence[ToolList] | None = None
    ) -> list[float]: ...


@dataclass
class ToolsimRewardConfig(RewardConfig, LoraFields):
    """``RewardConfig`` plus the model, dataset, held-out and LoRA fields of a reward-model run."""

    model_path: str = field(default_factory=default_model_path)
    """Local model folder (default: the packaged model, ``toolsim model path``)."""
    dataset_path: str | None = None
    """Preference pairs: JSONL rows with ``prompt``, ``chosen``, ``rejected`` (message lists)."""
    heldout_fraction: float = 0.2
    """Share of pairs held out to measure pairwise accuracy (0 = no held-out measurement)."""
    score_batch_size: int = 8
    """Conversations per forward pass when scoring held-out pairs."""

    # TRL/transformers defaults changed for this stage.
    output_dir: str | None = "runs/rm"
    logging_steps: float = 1
    report_to: str | list[str] | None = field(default_factory=lambda: ["tensorboard"])

    def __post_init__(self) -> None:
        resolve_bf16(self)
        super().__post_init__()  # type: ignore[no-untyped-call]
        validate_lora(self)
        validate_inputs(self.model_path, self.dataset_path, "PAIRS.jsonl")
        self._check_heldout()
        if self.chat_template_path is not None:
            raise ConfigError(
                f"chat_template_path={self.chat_template_path!r}: the reward model must read "
                "trajectories as the policy writes them (Qwen2.5 template); "
                "remove chat_template_path"
            )

    def _check_heldout(self) -> None:
        validate_heldout(
            "heldout_fraction", self.heldout_fraction, self.eval_strategy, "pairs", 0.2
        )
        if self.score_batch_size < 1:
            raise ConfigError(f"score_batch_size must be >= 1 (got {self.score_batch_size})")


# ---------------------------------------------------------------------------- data


def validate_pair_rows(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Every column a non-empty message list and each side ending in an assistant turn."""
    for number, row in enumerate(rows, start=1):
        for column in RM_COLUMNS:
            value = row[column]
            if not isinstance(value, list) or not value or not isinstance(value[0], dict):
                raise DatasetError(
                    f"{path}: row {number}: '{column}' must be a non-empty list of chat messages"
                )
        for column in ("chosen", "rejected"):
            if row[column][-1].get("role") != "assistant":
                raise DatasetError(
                    f"{path}: row {number}: '{column}' must end with the assistant's last turn"
                )


def load_pair_datasets(config: ToolsimRewardConfig) -> tuple[Dataset, Dataset | None]:
    """Validated train and held-out splits of ``config.dataset_path``."""
    path = str(config.dataset_path)
    rows = read_jsonl_rows(path, RM_COLUMNS)
    validate_pair_rows(rows, path)
    held_out = split_count(len(rows), config.heldout_fraction, "heldout_fraction")
    dataset = load_dataset("json", data_files=path, split="train")
    if held_out == 0:
        return dataset, None
    parts = dataset.train_test_split(test_size=held_out, seed=config.seed)
    return parts["train"], parts["test"]


def _tools(value: Any) -> list[dict[str, Any]] | None:
    """A row's ``tools``: a JSON string in files (as TRL documents it) or already a list."""
    if value is None or value == "":
        return None
    parsed = json.loads(value) if isinstance(value, str) else value
    return list(parsed)


# ---------------------------------------------------------------------------- scoring


class RewardScorer:
    """The trained reward model as a function of whole conversations.

    It tokenizes exactly as ``RewardTrainer`` did (the chat template over prompt + trajectory,
    with the row's tools), so scores at GRPO time mean what they meant in training.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, batch_size: int = 8) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def __call__(
        self,
        conversations: Sequence[Messages],
        tools: Sequence[ToolList] | None = None,
    ) -> list[float]:
        """One score per conversation; ``tools`` (one entry per conversation) as in the data."""
        tool_lists = list(tools) if tools is not None else [None] * len(conversations)
        if len(tool_lists) != len(conversations):
            raise ValueError(f"{len(conversations)} conversations but {len(tool_lists)} tool lists")
        ids = [self._encode(c, _tools(t)) for c, t in zip(conversations, tool_lists, strict=True)]
        scores: list[float] = []
        for start in range(0, len(ids), self.batch_size):
            scores.extend(self._score_batch(ids[start : start + self.batch_size]))
        return scores

    def _encode(self, messages: Messages, tools: list[dict[str, Any]] | None) -> list[int]:
        encoded = self.tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=True, return_dict=True
        )
        return list(encoded["input_ids"])

    @torch.no_grad()
    def _score_batch(self, batch: list[list[int]]) -> list[float]:
        # Right padding like TRL's preference collator; the head reads the last non-pad token.
        width = max(len(ids) for ids in batch)
        pad = int(self.tokenizer.pad_token_id)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[row, : len(ids)] = 1
        self.model.eval()
        device = next(self.model.parameters()).device
        output = self.model(input_ids=input_ids.to(device), attention_mask=attention.to(device))
        logits = output.logits
        return [float(v) for v in logits[:, 0].float().cpu()]


def load_reward_scorer(
    run_dir: str | Path, batch_size: int = 8, device: str | None = None
) -> RewardScorer:
    """The reward model a finished ``toolsim train rm`` run saved in ``<run_dir>/final``.

    ``device`` (e.g. ``cuda:0``) places it; default CPU, beside a policy that owns the GPU.
    """
    run = Path(run_dir)
    final = run / FINAL_DIR
    if not (final / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{final} has no adapter: is {run} a finished reward-model run (toolsim train rm)?"
        )
    tokenizer = load_tokenizer(final)
    base = AutoModelForSequenceClassification.from_pretrained(
        _base_model_path(run), num_labels=1, local_files_only=True, dtype=torch.float32
    )
    base.config.pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(base, str(final))
    if device is not None:
        model.to(device)
    return RewardScorer(model, tokenizer, batch_size=batch_size)


def _base_model_path(run: Path) -> str:
    """The base model a run trained on, from its resolved config."""
    resolved = yaml.safe_load((run / RESOLVED_CONFIG).read_text())
    return str(resolved["model_path"])


def pairwise_accuracy(scorer: RewardScoreFn, pairs: Dataset) -> dict[str, float]:
    """Share of pairs whose chosen trajectory outscores the rejected one (ties count as wrong)."""
    chosen = [row["prompt"] + row["chosen"] for row in pairs]
    rejected = [row["prompt"] + row["rejected"] for row in pairs]
    tools = [row.get("tools") for row in pairs]
    chosen_scores, rejected_scores = scorer(chosen, tools), scorer(rejected, tools)
    margins = [c - r for c, r in zip(chosen_scores, rejected_scores, strict=True)]
    wins = sum(1 for m in margins if m > 0)
    return {
        HELDOUT_ACCURACY: wins / len(margins),
        "heldout/pairs": float(len(margins)),
        "heldout/mean_margin": sum(margins) / len(margins),
    }


# ---------------------------------------------------------------------------- run


def build_reward_trainer(
    config: ToolsimRewardConfig, callbacks: Sequence[TrainerCallback] = ()
) -> RewardTrainer:
    """The TRL trainer for ``config``: LoRA ``SEQ_CLS`` adapter, a trained score head."""
    train, heldout = load_pair_datasets(config)
    return _make_trainer(config, train, heldout, callbacks)


def _make_trainer(
    config: ToolsimRewardConfig,
    train: Dataset,
    heldout: Dataset | None,
    callbacks: Sequence[TrainerCallback],
) -> RewardTrainer:
    tokenizer = load_tokenizer(config.model_path)
    trainer = RewardTrainer(
        model=config.model_path,
        args=config,
        train_dataset=train,
        eval_dataset=heldout,
        processing_class=tokenizer,
        peft_config=build_lora_config(config, "SEQ_CLS", modules_to_save=["score"]),
        callbacks=[MetricsCallback(), *callbacks],
    )
    _check_length_filter(config, len(train), trainer)
    return trainer


def _check_length_filter(config: ToolsimRewardConfig, rows: int, trainer: RewardTrainer) -> None:
    """``RewardTrainer`` silently drops pairs over ``max_length``; say so, and fail if all were."""
    kept = len(cast(Dataset, trainer.train_dataset))
    if kept == 0:
        raise DatasetError(
            f"{config.dataset_path}: every training pair is longer than max_length="
            f"{config.max_length} tokens; raise max_length"
        )
    if kept < rows:
        print(f"reward model: {rows - kept} of {rows} pairs over max_length={config.max_length}")
        dropped = {"step": 0, "data/pairs_over_max_length": rows - kept}
        append_metrics(config.output_dir or ".", dropped)


def run_rm(config: ToolsimRewardConfig, callbacks: Sequence[TrainerCallback] = ()) -> Path:
    """Train (resuming from the newest checkpoint), save to ``<run>/final``, measure held-out pairs.

    Returns the run folder; ``heldout_accuracy(run)`` reads the measured accuracy back.
    """
    run_dir = prepare_run_dir(config)
    train, heldout = load_pair_datasets(config)
    trainer = _make_trainer(config, train, heldout, callbacks)
    trainer.train(resume_from_checkpoint=resume_point(config))
    save_final(trainer, trainer.processing_class, run_dir)
    if heldout is not None:
        model = trainer.model
        assert model is not None  # the trainer was built from a model path
        scorer = RewardScorer(model, trainer.processing_class, config.score_batch_size)
        result = pairwise_accuracy(scorer, heldout)
        append_metrics(run_dir, {"step": trainer.state.global_step, **result})
        print(
            f"held-out pairwise accuracy: {result[HELDOUT_ACCURACY]:.3f} "
            f"({int(result['heldout/pairs'])} pairs)"
        )
    else:
        print("held-out pairwise accuracy: not measured (heldout_fraction=0)")
    return run_dir


def heldout_accuracy(run_dir: str | Path) -> float:
    """The last held-out pairwise accuracy a run wrote to its metrics."""
    values = [r[HELDOUT_ACCURACY] for r in read_metrics(run_dir) if HELDOUT_ACCURACY in r]
    if not values:
        raise LookupError(f"{run_dir}: no {HELDOUT_ACCURACY} in metrics (heldout_fraction=0?)")
    return float(values[-1])


def configure_parser(p: argparse.ArgumentParser) -> None:
    """``toolsim train rm [--config FILE.yaml] [--set key=value]...``."""
    commands.rm.configure_parser(p)
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    """Run reward-model training from the CLI; the last stdout line is the run folder."""
    config = load_config(ToolsimRewardConfig, args.config, args.overrides)
    print(run_rm(config))
    return 0
