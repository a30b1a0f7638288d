"""Stage 1: supervised fine-tuning of the policy on tool-use traces (``toolsim train sft``).

TRL's ``SFTTrainer`` with a LoRA adapter, trained only on the policy's own tokens: the
assistant turns (``<think>`` + ``<tool_call>`` blocks or ``<answer>``, then ``<|im_end|>``).
System prompt, question and ``<tool_response>`` observations are context, never targets;
training on observations would teach the policy to invent tool results. TRL builds that mask
(``assistant_only_loss``) from the Qwen2.5 template that ``chat_template.load_tokenizer`` sets.

Dataset rows (JSONL): ``{"messages": [OpenAI chat messages, tool_call arguments as objects],
"tools": "<JSON string of the OpenAI tool list>"}``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from datasets import Dataset, load_dataset
from transformers import TrainerCallback
from trl.trainer.sft_config import SFTConfig
from trl.trainer.sft_trainer import SFTTrainer

from toolsim_trainer.chat_template import load_tokenizer
from toolsim_trainer.data import DatasetError
from toolsim_trainer.grammar import MessagesError, messages_to_trace
from toolsim_trainer.train import commands
from toolsim_trainer.train.common import (
    ConfigError,
    LoraFields,
    MetricsCallback,
    append_metrics,
    build_lora_config,
    default_model_path,
    load_config,
    prepare_run_dir,
    read_jsonl_rows,
    resolve_bf16,
    resume_point,
    save_final,
    split_count,
    validate_heldout,
    validate_inputs,
    validate_lora,
)

SFT_COLUMNS = ("messages", "tools")


@dataclass
class ToolsimSFTConfig(SFTConfig, LoraFields):
    """``SFTConfig`` plus the model, dataset and LoRA fields of a toolsim SFT run."""

    model_path: str = field(default_factory=default_model_path)
    """Local model folder (default: the packaged model, ``toolsim model path``)."""
    dataset_path: str | None = None
    """The SFT dataset: JSONL rows with ``messages`` and ``tools``."""
    eval_fraction: float = 0.0
    """Share of rows held out for evaluation (0 = no eval split)."""
    check_grammar: bool = True
    """Reject rows whose assistant turns break the trace grammar (``grammar.parse_turn``)."""

    # TRL/transformers defaults changed for this stage.
    output_dir: str | None = "runs/sft"
    assistant_only_loss: bool = True
    max_length: int | None = 1024
    logging_steps: float = 1
    report_to: str | list[str] | None = field(default_factory=lambda: ["tensorboard"])

    def __post_init__(self) -> None:
        resolve_bf16(self)
        super().__post_init__()  # type: ignore[no-untyped-call]
        validate_lora(self)
        self._check_loss_mask()
        validate_inputs(self.model_path, self.dataset_path, "FILE.jsonl")
        validate_heldout("eval_fraction", self.eval_fraction, self.eval_strategy, "rows")

    def _check_loss_mask(self) -> None:
        if not self.assistant_only_loss:
            raise ConfigError(
                "assistant_only_loss must be true: with it off the policy also learns to write "
                "prompts and <tool_response> observations. Remove assistant_only_loss=false."
            )
        if self.packing:
            raise ConfigError(
                "packing=true cannot be combined with assistant_only_loss on this model (packing "
                "without flash attention mixes rows); set packing=false"
            )
        if self.chat_template_path is not None:
            raise ConfigError(
                f"chat_template_path={self.chat_template_path!r}: the loss mask and the trace "
                "grammar rely on the Qwen2.5 template that toolsim sets; remove chat_template_path"
            )


def validate_sft_rows(rows: Sequence[dict[str, Any]], path: str | Path, grammar: bool) -> None:
    """Check every row's shape (and grammar) so a bad trace fails naming its line, not mid-run."""
    for number, row in enumerate(rows, start=1):
        where = f"{path}: row {number}"
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise DatasetError(f"{where}: 'messages' must be a non-empty list of chat messages")
        _check_tools(row["tools"], where)
        _check_arguments_are_objects(messages, where)
        if not any(m.get("role") == "assistant" for m in messages):
            raise DatasetError(f"{where}: no assistant message, so nothing to train on")
        if grammar:
            try:
                messages_to_trace(messages)
            except MessagesError as exc:
                raise DatasetError(f"{where}: {exc} (or set check_grammar=false)") from exc


def _check_tools(tools: Any, where: str) -> None:
    try:
        parsed = json.loads(tools) if isinstance(tools, str) else tools
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: 'tools' is not valid JSON ({exc.msg})") from exc
    if not isinstance(parsed, list):
        raise DatasetError(f"{where}: 'tools' must be a JSON string of the OpenAI tool list")


def _check_arguments_are_objects(messages: list[dict[str, Any]], where: str) -> None:
    """The template renders ``arguments`` with ``tojson``: a JSON string would come out quoted."""
    for index, message in enumerate(messages):
        for call in message.get("tool_calls") or ():
            arguments = call.get("function", {}).get("arguments")
            if not isinstance(arguments, dict):
                raise DatasetError(
                    f"{where}: messages[{index}] tool call arguments must be a JSON object, got "
                    f"{type(arguments).__name__} (write trace_to_messages(..., arguments='object'))"
                )


def load_sft_datasets(config: ToolsimSFTConfig) -> tuple[Dataset, Dataset | None]:
    """Validated train (and optional eval) splits of ``config.dataset_path``."""
    path = str(config.dataset_path)
    rows = read_jsonl_rows(path, SFT_COLUMNS)
    validate_sft_rows(rows, path, config.check_grammar)
    held_out = split_count(len(rows), config.eval_fraction, "eval_fraction")
    # datasets' JSON loader keeps each row's own tool-call argument keys (no null-filled union).
    dataset = load_dataset("json", data_files=path, split="train")
    dataset = dataset.select_columns(list(SFT_COLUMNS))
    if held_out == 0:
        return dataset, None
    parts = dataset.train_test_split(test_size=held_out, seed=config.seed)
    return parts["train"], parts["test"]


def build_sft_trainer(
    config: ToolsimSFTConfig, callbacks: Sequence[TrainerCallback] = ()
) -> SFTTrainer:
    """The TRL trainer for ``config``: LoRA adapter, Qwen2.5 template, metrics to JSONL."""
    train, evaluation = load_sft_datasets(config)
    tokenizer = load_tokenizer(config.model_path)
    trainer = SFTTrainer(
        model=config.model_path,
        args=config,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=build_lora_config(config, "CAUSAL_LM"),
        callbacks=[MetricsCallback(), *callbacks],
    )
    _report_truncation(config, len(train), cast(Dataset, trainer.train_dataset))
    return trainer


def _report_truncation(config: ToolsimSFTConfig, rows: int, prepared: Dataset) -> None:
    """TRL cuts rows at ``max_length`` (a cut trace never shows its ``<|im_end|>``) and drops
    rows cut before their first assistant token, both silently; count them instead."""
    if config.max_length is None:
        return
    cut = sum(1 for ids in prepared["input_ids"] if len(ids) >= config.max_length)
    dropped = rows - len(prepared)
    if len(prepared) == 0:
        raise DatasetError(
            f"{config.dataset_path}: every row's prompt is longer than max_length="
            f"{config.max_length} tokens; raise max_length"
        )
    if cut or dropped:
        print(f"SFT: {cut} of {rows} rows cut at max_length={config.max_length}, {dropped} dropped")
        record = {"step": 0, "data/rows_cut_at_max_length": cut, "data/rows_dropped": dropped}
        append_metrics(config.output_dir or ".", record)


def run_sft(config: ToolsimSFTConfig, callbacks: Sequence[TrainerCallback] = ()) -> Path:
    """Train, resuming from the run folder's newest checkpoint; returns the run folder.

    The adapter and tokenizer land in ``<run>/final``; GRPO starts from there.
    """
    run_dir = prepare_run_dir(config)
    trainer = build_sft_trainer(config, callbacks)
    trainer.train(resume_from_checkpoint=resume_point(config))
    if trainer.eval_dataset is not None:
        trainer.evaluate()  # logged (eval_loss) into metrics.jsonl by MetricsCallback
    save_final(trainer, trainer.processing_class, run_dir)
    return run_dir


def configure_parser(p: argparse.ArgumentParser) -> None:
    """``toolsim train sft [--config FILE.yaml] [--set key=value]...``."""
    commands.sft.configure_parser(p)
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    """Run SFT from the CLI; prints the run folder (the only stdout line)."""
    config = load_config(ToolsimSFTConfig, args.config, args.overrides)
    print(run_sft(config))
    return 0
