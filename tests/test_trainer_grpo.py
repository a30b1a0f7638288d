"""Stage-2 GRPO: the config's rules, bad input, and short real TRL runs against a ToolActor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from tests.conftest import free_port, packaged_model_dir
from tests.test_trainer_rollout import (  # noqa: F401  (one_torch_thread is a fixture)
    DATA,
    LIVE_SEARCH,
    SEARCH,
    ActorServer,
    ScriptedPolicy,
    answer,
    call,
    one_torch_thread,
)
from toolsim_trainer.clients import ActorClient, ServiceUnavailableError
from toolsim_trainer.data import DatasetError
from toolsim_trainer.train.common import ConfigError, load_config, read_metrics, shipped_config
from toolsim_trainer.train.grpo import (
    ToolsimGRPOConfig,
    build_grpo_trainer,
    load_question_rows,
    run_grpo,
)
from toolsim_trainer.train.rollout import RolloutConfig, make_rollout_func

HOTPOT = DATA / "context" / "hotpotqa_train.json"
TITLE = "Demon algorithm"  # a passage title of the corpus: the top search result for itself
FAST_LORA = {"lora_r": 2, "lora_target_modules": ["q_proj", "v_proj"]}


def config(tmp_path: Path, **overrides: Any) -> ToolsimGRPOConfig:
    base: dict[str, Any] = {
        "output_dir": str(tmp_path / "run"),
        "model_path": str(packaged_model_dir()),
        "dataset_path": str(HOTPOT),
        "tools": [SEARCH],
        "modes": {"search": "live"},
        "bf16": False,
        "use_cpu": True,
        "report_to": [],
    }
    base.update(overrides)
    return ToolsimGRPOConfig(**base)


# ---------------------------------------------------------------------------- config rules


def test_defaults_are_dapo_and_the_shipped_demo_config_loads(tmp_path: Path) -> None:
    plain = config(tmp_path)
    assert (plain.loss_type, plain.epsilon_high, plain.beta) == ("dapo", 0.28, 0.0)
    assert plain.mask_truncated_completions and plain.reward_weights is None
    demo = load_config(
        ToolsimGRPOConfig,
        shipped_config("grpo-cpu-demo.yaml"),
        [f"dataset_path={HOTPOT}", f"output_dir={tmp_path}"],
    )
    assert demo.tools and demo.tools[0]["function"]["name"] == "search" and demo.grounded


RULES: list[tuple[dict[str, Any], str]] = [
    ({"tools": None, "modes": None}, "exactly one of toolset_id"),
    ({"toolset_id": "ts_1"}, "exactly one of toolset_id"),
    ({"tools": None, "toolset_id": "ts_1"}, "modes go with inline tools"),
    ({"modes": {"search": "real"}}, "each mode is one of"),
    ({"tools": None, "modes": None, "toolset_file": "/nope.json"}, "toolset_file=/nope.json"),
    ({"toolactor_url": "127.0.0.1:8001"}, "must be an http"),
    ({"use_transformers_continuous_batching": True}, "use_transformers_continuous_batching"),
    ({"max_tool_calling_iterations": 3}, "max_tool_calls / max_turns"),
    ({"reward_weights": [1.0]}, "reward_\\*_weight"),
    ({"max_completion_length": None}, "max_completion_length=None"),
    ({"max_turns": 1}, "max_turns >= 2 or max_tool_calls=0"),
    ({"max_tool_calls": -1}, "max_tool_calls >= 0"),
    ({"tool_retries": -1}, "retries >= 0"),
    ({"max_observation_tokens": 0}, "max_observation_tokens"),
    ({"tool_budget": 5, "max_tool_calls": 4}, "a budget above the hard cap"),
    ({"tool_budget_penalty": -0.1}, "tool_budget_penalty"),
    ({"dynamic_sampling_retries": -1}, "dynamic_sampling_retries=-1"),
    ({"overlong_max_tokens": 600, "max_completion_length": 512}, "no rollout can reach it"),
    ({"overlong_buffer": 512, "max_completion_length": 512}, "overlong_buffer=512"),
    ({"rm_weight": 0.5}, "go together"),
    ({"eval_strategy": "steps", "eval_steps": 1}, "set val_fraction"),
    ({"val_fraction": 1.0}, "val_fraction must be in"),
    ({"dataset_path": None}, "dataset_path is required"),
    ({"dataset_path": "/nope.jsonl"}, "does not exist"),
    ({"model_path": "/nope"}, "toolsim model fetch"),
    ({"adapter_path": "/tmp"}, "SFT run's final/"),
    ({"lora_r": 0}, "lora_r must be > 0"),
]


@pytest.mark.parametrize(("overrides", "message"), RULES, ids=[m for _, m in RULES])
def test_each_config_rule_says_how_to_fix(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, **overrides)


def test_trl_rules_still_apply(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 2 generations per prompt"):
        config(tmp_path, num_generations=1, per_device_train_batch_size=1)


def test_rm_path_needs_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rm_path=/nope is not a reward model run"):
        config(tmp_path, rm_path="/nope", rm_weight=0.5)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("row", "column"),
    [({"answer": "Paris"}, "'question'"), ({"question": "Capital of France?"}, "'answer'")],
)
def test_a_dataset_without_a_required_column_names_it_and_the_file(
    tmp_path: Path, row: dict[str, Any], column: str
) -> None:
    bad = tmp_path / "rows.jsonl"
    bad.write_text(json.dumps({"question": "ok?", "answer": "yes"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DatasetError, match=f"{bad}:2: missing field {column}"):
        load_question_rows(config(tmp_path, dataset_path=str(bad)))


def test_toolactor_down_at_start_fails_fast_before_the_run_folder(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    cfg = config(tmp_path, toolactor_url=url, tool_retries=0)
    with pytest.raises(ServiceUnavailableError, match="toolsim serve toolactor") as info:
        run_grpo(cfg)
    assert url in str(info.value)
    assert not (tmp_path / "run").exists()  # nothing was written, no model was loaded


@pytest.mark.slow
def test_grpo_continues_an_sft_adapter(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(packaged_model_dir())
    sft = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    for name, param in sft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.constant_(param, 0.5)
    sft.save_pretrained(str(tmp_path / "sft"))

    class NoRollout:
        tools = [SEARCH]

        def __call__(self, prompts: Any, trainer: Any) -> Any:
            raise AssertionError("not called: nothing is trained here")

    cfg = config(tmp_path, adapter_path=str(tmp_path / "sft"), dataset_limit=2)
    train, held_out = load_question_rows(cfg)
    trainer = build_grpo_trainer(cfg, NoRollout(), train, held_out)
    lora_b = {k: v for k, v in trainer.model.named_parameters() if "lora_B" in k}
    assert lora_b and all(v.requires_grad and bool((v == 0.5).all()) for v in lora_b.values())
    assert trainer.args.reward_weights == [1.0, 0.5, 0.5, 0.25, 1.0, 1.0]


# ---------------------------------------------------------------------------- real runs


def lora_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def by_step(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in rows if key in r]


class ToolActorOutage(TrainerCallback):
    """Stops the ToolActor after step ``down_after`` and starts it again after ``up_after``."""

    def __init__(self, server: ActorServer, down_after: int, up_after: int) -> None:
        self.server, self.down_after, self.up_after = server, down_after, up_after

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.down_after:
            self.server.stop()
        if state.global_step == self.up_after:
            self.server.start()


class SplitGroupPolicy(ScriptedPolicy):
    """Searches, then answers with the passage found (even rows) or with a guess the
    observations do not support (odd rows): the two rollouts of a group score differently."""

    def __init__(self) -> None:
        super().__init__(lambda k: call(query=TITLE, top_k=1))

    def text(self, done: int, index: int) -> str:
        if done == 0:
            return self.script(done)
        return answer(TITLE if index % 2 == 0 else "no idea")


class AdapterSnapshots(TrainerCallback):
    """The LoRA B matrices after every step."""

    def __init__(self) -> None:
        self.model: Any = None
        self.after: list[dict[str, torch.Tensor]] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        params = kwargs["model"].named_parameters()
        self.after.append({k: v.detach().clone() for k, v in params if "lora_B" in k})


@pytest.mark.train
@pytest.mark.usefixtures("one_torch_thread")
def test_grpo_through_a_toolactor_outage_and_a_group_with_equal_rewards(tmp_path: Path) -> None:
    """Three real GRPO steps (TRL's trainer, the packaged model's forward and backward passes)
    over rollouts written by a scripted policy. The ToolActor goes away for step 2 and comes
    back (with an empty registry) for step 3. In step 2 every call fails, so both rollouts of
    the group score the same: advantage 0, and with plain SGD the adapter does not move
    (dynamic sampling is off by default; TRL logs ``frac_reward_zero_std``). Steps 1 and 3
    train."""
    server = ActorServer().start()
    cfg = config(
        tmp_path,
        toolactor_url=server.url,
        dataset_limit=3,
        num_generations=2,
        per_device_train_batch_size=2,
        max_steps=3,
        max_completion_length=512,
        max_observation_tokens=48,
        overlong_buffer=64,
        optim="sgd",  # no momentum: a zero gradient is no update
        learning_rate=0.5,
        save_strategy="no",
        tool_retries=1,
        **FAST_LORA,
    )
    train, held_out = load_question_rows(cfg)
    rollout = make_rollout_func(
        RolloutConfig(max_completion_length=512, max_observation_tokens=48),
        lambda: ActorClient(server.url, retries=1, backoff_s=0.01, timeout_s=10),
        LIVE_SEARCH,
        generator=SplitGroupPolicy(),
    )
    snapshots = AdapterSnapshots()
    try:
        trainer = build_grpo_trainer(
            cfg, rollout, train, held_out, [ToolActorOutage(server, 1, 2), snapshots]
        )
        trainer.train()
    finally:
        rollout.close()
        server.stop()
    rows = read_metrics(cfg.output_dir or "")
    assert by_step(rows, "tools/failure_rate") == [0.0, 1.0, 0.0]  # down, then picked up again
    assert by_step(rows, "tools/failures") == [0.0, 2.0, 0.0]
    assert by_step(rows, "tools/episode_failures") == [0.0, 2.0, 0.0]
    assert by_step(rows, "tools/calls_per_rollout") == [1.0, 1.0, 1.0]
    assert by_step(rows, "rewards/consistency/mean") == [0.0, -1.0, 0.0]  # +1 and -1, then -1s
    assert by_step(rows, "frac_reward_zero_std") == [0.0, 1.0, 0.0]
    first, second, third = snapshots.after
    assert any(v.abs().sum() > 0 for v in first.values())  # LoRA B starts at zero
    assert all(torch.equal(first[k], second[k]) for k in first)  # the equal group: no update
    assert not all(torch.equal(second[k], third[k]) for k in second)


@pytest.mark.train
@pytest.mark.usefixtures("one_torch_thread")
def test_short_grpo_run_with_the_packaged_model_generating(tmp_path: Path) -> None:
    """``run_grpo`` end to end with the packaged model writing the turns. Untrained, it rarely
    ends a turn within a CPU-sized budget, so its groups often score alike: the adapter change
    is checked in the scripted run above, the run's outputs here."""
    server = ActorServer().start()
    cfg = config(
        tmp_path,
        toolactor_url=server.url,
        dataset_limit=4,
        num_generations=2,
        per_device_train_batch_size=2,
        max_steps=2,
        max_completion_length=16,
        overlong_buffer=12,
        max_turns=2,
        max_tool_calls=1,
        tool_budget=1,
        **FAST_LORA,
        learning_rate=1e-3,
        temperature=1.0,
        save_strategy="no",
    )
    try:
        run_dir = run_grpo(cfg)
    finally:
        server.stop()
    rows = read_metrics(run_dir)
    assert len(by_step(rows, "loss")) == 2
    names = ["correctness_em", "correctness_f1", "consistency", "format", "tool_budget", "overlong"]
    for name in names:
        assert len(by_step(rows, f"rewards/{name}/mean")) == 2, name
    for key in ("tools/calls_per_rollout", "tools/failure_rate", "tools/cache_hit_rate"):
        assert len(by_step(rows, key)) == 2, key
    assert all(v > 0 for v in by_step(rows, "timing/generation_s"))
    assert all(0 < v <= 16 for v in by_step(rows, "completions/mean_length"))  # policy tokens
    assert (run_dir / "resolved_config.yaml").is_file()
    trained = lora_weights(run_dir / "final")
    assert any("lora_B" in k for k in trained)
