"""The AutoTraj trajectory reward model: config rules, pair checks, a real short LoRA SEQ_CLS run
with held-out pairwise accuracy, and the saved scorer GRPO loads."""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import packaged_model_dir
from tests.test_trainer_sft import (
    SEARCH,
    SHORT_SYSTEM,
    _InitialWeights,
    search_traces,
    write_jsonl,
)
from toolsim_trainer.data import DatasetError
from toolsim_trainer.grammar import AssistantTurn, Trace, trace_to_messages
from toolsim_trainer.train.common import ConfigError, load_config

WRONG = {
    "Who directed the film Jaws?": "Stanley Kubrick",
    "In which country is the Eiffel Tower?": "Italy",
    "Who directed the film that won Best Picture at the 1998 Academy Awards?": "Steven Spielberg",
    "When was the author of Dune born?": "1965",
}


def preference_rows(
    system: str, tools: Sequence[dict[str, Any]] = (SEARCH,)
) -> list[dict[str, Any]]:
    """Per question: the grounded trace beats a guess without searching, and beats the same
    search with a wrong final answer (the two failure modes AutoTraj scores down)."""
    rows = []
    for trace in search_traces(system):
        messages = trace_to_messages(trace)
        guess = Trace(
            trace.question, [AssistantTurn("I think I know.", answer=WRONG[trace.question])], system
        )
        misread = Trace(
            trace.question,
            [*trace.turns[:-1], AssistantTurn("The result says so.", answer=WRONG[trace.question])],
            system,
        )
        for rejected in (guess, misread):
            rows.append(
                {
                    "prompt": messages[:2],
                    "chosen": messages[2:],
                    "rejected": trace_to_messages(rejected)[2:],
                    "tools": json.dumps(list(tools)),
                }
            )
    return rows


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", preference_rows(SHORT_SYSTEM))


def rm_config(dataset: Path, output: Path, *overrides: str) -> Any:
    from toolsim_trainer.train.rm import ToolsimRewardConfig

    base = [
        f"dataset_path={dataset}",
        f"output_dir={output}",
        f"model_path={packaged_model_dir()}",
        "report_to=[]",
        "bf16=false",
        "activation_checkpointing=false",
    ]
    return load_config(ToolsimRewardConfig, None, [*base, *overrides])


# ---------------------------------------------------------------------------- config and data


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("heldout_fraction=1.0", r"heldout_fraction must be in \[0, 1\)"),
        ("heldout_fraction=-0.1", r"heldout_fraction must be in \[0, 1\)"),
        (
            "eval_strategy=steps",
            r"eval_strategy=steps .*set heldout_fraction \(e\.g\. 0\.2\) or eval_strategy=no",
        ),
        ("chat_template_path=other.jinja", "remove chat_template_path"),
        ("lora_r=0", "lora_r must be > 0"),
        ("score_batch_size=0", "score_batch_size must be >= 1"),
        ("dataset_path=/nonexistent/pairs.jsonl", "does not exist"),
        ("model_path=/nonexistent/model", "toolsim model fetch"),
    ],
)
def test_config_rule_says_how_to_fix(
    pairs_file: Path, tmp_path: Path, override: str, message: str
) -> None:
    overrides = (
        [override] if override != "eval_strategy=steps" else [override, "heldout_fraction=0"]
    )
    with pytest.raises(ConfigError, match=message):
        rm_config(pairs_file, tmp_path / "run", *overrides)


def _load(path: Path, tmp_path: Path, *overrides: str) -> tuple[Any, Any]:
    from toolsim_trainer.train.rm import load_pair_datasets

    return load_pair_datasets(rm_config(path, tmp_path / "run", *overrides))


def test_missing_column_names_the_column_and_the_file(tmp_path: Path) -> None:
    rows = preference_rows(SHORT_SYSTEM)
    del rows[0]["rejected"]
    path = write_jsonl(tmp_path / "no_rejected.jsonl", rows)
    with pytest.raises(
        DatasetError,
        match=rf"{path}:1: missing column 'rejected' \(every row needs prompt, chosen, rejected\)",
    ):
        _load(path, tmp_path)


def test_a_side_must_end_with_the_assistant(tmp_path: Path) -> None:
    rows = preference_rows(SHORT_SYSTEM)
    rows[3]["chosen"] = rows[3]["chosen"][:-1]  # ends on the tool observation
    path = write_jsonl(tmp_path / "cut.jsonl", rows)
    with pytest.raises(
        DatasetError, match="row 4: 'chosen' must end with the assistant's last turn"
    ):
        _load(path, tmp_path)


def test_heldout_slice_is_deterministic_and_never_empties_training(
    pairs_file: Path, tmp_path: Path
) -> None:
    train, held = _load(pairs_file, tmp_path, "heldout_fraction=0.25")
    _, again = _load(pairs_file, tmp_path, "heldout_fraction=0.25")
    assert (len(train), len(held)) == (6, 2)
    assert list(held["rejected"]) == list(again["rejected"])
    two = write_jsonl(tmp_path / "two.jsonl", preference_rows(SHORT_SYSTEM)[:2])
    with pytest.raises(ConfigError, match="holds out 2 of 2 rows and leaves none to train on"):
        _load(two, tmp_path, "heldout_fraction=0.9")


def test_scorer_needs_a_finished_run(tmp_path: Path) -> None:
    from toolsim_trainer.train.rm import load_reward_scorer

    with pytest.raises(FileNotFoundError, match=r"is .* a finished reward-model run"):
        load_reward_scorer(tmp_path)


# ---------------------------------------------------------------------------- a real run


@dataclass
class RewardRun:
    run_dir: Path
    config: Any
    initial: dict[str, Any]
    stdout: str
    seconds: float


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RewardRun]:
    from toolsim_trainer.train.rm import run_rm

    folder = tmp_path_factory.mktemp("rm")
    # No tool list in the prompt keeps each trajectory ~100 tokens (seconds a step on 2 cores).
    config = rm_config(
        write_jsonl(folder / "pairs.jsonl", preference_rows(SHORT_SYSTEM, tools=())),
        folder / "run",
        "max_steps=1",
        "save_steps=1",
        "per_device_train_batch_size=1",
        "lora_r=4",
        "lora_alpha=8",
        "lora_target_modules=[q_proj, v_proj]",
        "max_length=384",
        "learning_rate=1e-3",
        "heldout_fraction=0.25",
        "score_batch_size=2",
    )
    initial = _InitialWeights()
    out = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out):
        run_dir = run_rm(config, callbacks=[initial.callback])
    yield RewardRun(
        run_dir, config, dict(initial.weights), out.getvalue(), time.perf_counter() - started
    )


@pytest.mark.slow
@pytest.mark.train
def test_rm_run_trains_the_adapter_and_the_score_head(rm_run: RewardRun) -> None:
    import torch
    from safetensors.torch import load_file

    final = rm_run.run_dir / "final"
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["task_type"]) == (4, "SEQ_CLS")
    assert "score" in adapter["modules_to_save"]
    saved = load_file(str(final / "adapter_model.safetensors"))
    initial = {k.replace(".modules_to_save", ""): v for k, v in rm_run.initial.items()}
    assert set(saved) <= set(initial), sorted(set(saved) - set(initial))[:3]
    heads = [k for k in saved if "score" in k]
    assert heads and all(saved[k].shape[0] == 1 for k in heads)  # one scalar reward
    changed = [k for k, v in saved.items() if not torch.equal(v, initial[k])]
    assert set(heads) <= set(changed)
    assert all(torch.any(saved[k]) for k in saved if "lora_B" in k)
    # One step: every lora_B moves (A waits for a non-zero B), and the score head.
    assert sorted(k for k in changed if "lora_" in k) == sorted(k for k in saved if "lora_B" in k)
    assert len([k for k in saved if "lora_B" in k]) == 30 * 2


@pytest.mark.slow
@pytest.mark.train
def test_rm_run_reports_heldout_pairwise_accuracy(rm_run: RewardRun) -> None:
    from toolsim_trainer.train.common import read_metrics
    from toolsim_trainer.train.rm import HELDOUT_ACCURACY, heldout_accuracy

    metrics = read_metrics(rm_run.run_dir)
    losses = [r for r in metrics if "loss" in r]
    assert [r["step"] for r in losses] == [1] and all(
        "accuracy" in r and "margin" in r for r in losses
    )
    heldout = [r for r in metrics if HELDOUT_ACCURACY in r]
    assert len(heldout) == 1 and heldout[0]["step"] == 1 and heldout[0]["heldout/pairs"] == 2
    accuracy = heldout_accuracy(rm_run.run_dir)
    assert accuracy in (0.0, 0.5, 1.0)
    assert f"held-out pairwise accuracy: {accuracy:.3f} (2 pairs)" in rm_run.stdout
    print(f"RM run (1 step + save + held-out scoring): {rm_run.seconds:.1f} s, accuracy {accuracy}")


@pytest.mark.slow
@pytest.mark.train
def test_saved_scorer_reproduces_the_run(rm_run: RewardRun) -> None:
    """GRPO's view: the scorer loaded from disk gives the accuracy the run measured, and a
    batch scores each conversation as scoring it alone does (right padding is harmless)."""
    from toolsim_trainer.train.rm import (
        heldout_accuracy,
        load_pair_datasets,
        load_reward_scorer,
    )

    scorer = load_reward_scorer(rm_run.run_dir, batch_size=3)  # 4 conversations: 2 batches
    _, heldout = load_pair_datasets(rm_run.config)
    pairs = list(heldout)
    conversations = [p["prompt"] + p[side] for side in ("chosen", "rejected") for p in pairs]
    scores = scorer(conversations, tools=[p["tools"] for p in pairs] * 2)
    assert len(scores) == 4
    chosen, rejected = scores[: len(pairs)], scores[len(pairs) :]
    assert all(c != r for c, r in zip(chosen, rejected, strict=True))
    wins = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    assert wins / len(pairs) == heldout_accuracy(rm_run.run_dir)
    # The shortest conversation of the first batch is the one right padding could disturb.
    shortest = min(range(3), key=lambda i: len(json.dumps(conversations[i])))
    alone = scorer([conversations[shortest]], tools=[pairs[0]["tools"]])
    assert alone == pytest.approx([scores[shortest]], abs=1e-4)
