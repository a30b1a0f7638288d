"""GRPO turns on the embedded engine (``generation_backend: embedded``): the policy's merged
weights reach the engine every step, and the engine then writes what the policy would."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tests.conftest import packaged_model_dir
from tests.test_trainer_grpo import FAST_LORA, by_step, config
from tests.test_trainer_rollout import ActorServer, one_torch_thread  # noqa: F401  (a fixture)
from toolsim_trainer.chat_template import load_tokenizer
from toolsim_trainer.train.common import ConfigError, read_metrics
from toolsim_trainer.train.engine_generator import EngineGenerator, merged_weights
from toolsim_trainer.train.grpo import run_grpo


def lora_policy(seed: int = 0) -> Any:
    """The packaged model with a LoRA whose B is not zero (a trained adapter, in effect)."""
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(packaged_model_dir(), torch_dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    model = get_peft_model(base, lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


@pytest.mark.usefixtures("one_torch_thread")
def test_merged_weights_equal_peft_merge_and_leave_the_policy_alone() -> None:
    model = lora_policy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = merged_weights(model)
    assert len(merged) == 30 * 3  # three targets in each of the 30 layers
    reference = copy.deepcopy(model).merge_and_unload().state_dict()
    for name, weight in merged.items():
        assert name in reference, name
        torch.testing.assert_close(weight, reference[name], rtol=0, atol=1e-6)
    delta = (
        merged["model.layers.0.self_attn.q_proj.weight"]
        - reference["model.layers.0.self_attn.q_proj.weight"]
    )
    assert delta.abs().max() < 1e-6
    base_q = before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"]
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], base_q)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing merged in place


@pytest.mark.usefixtures("one_torch_thread")
def test_the_engine_writes_what_the_policy_would(tmp_path: Path) -> None:
    """Greedy, the engine (float32, the policy's LoRA merged in) and ``generate`` on the
    policy produce the same turn; after another step's weights, the engine follows them."""
    tokenizer = load_tokenizer(packaged_model_dir())
    policy = lora_policy()
    trainer = SimpleNamespace(
        model=policy,
        model_wrapped=policy,
        state=SimpleNamespace(global_step=0),
        accelerator=SimpleNamespace(unwrap_model=lambda m: m, device=torch.device("cpu")),
        processing_class=tokenizer,
        generation_config=SimpleNamespace(),
    )
    messages = [
        {"role": "system", "content": "You answer questions in one short sentence."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    encoded = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    prompt = [int(t) for t in encoded]
    stop = [int(tokenizer.convert_tokens_to_ids("<|im_end|>"))]
    engine = EngineGenerator(packaged_model_dir(), temperature=0.0, seed=0, dtype="float32")
    try:
        first = engine(trainer, [prompt, prompt], [24, 24], stop)
        assert engine.synced_step == 0
        expected = _greedy(policy, prompt, 24, stop)
        assert first[0].ids == first[1].ids == expected, (
            tokenizer.decode(first[0].ids),
            tokenizer.decode(expected),
        )
        # the next step's weights: the engine must sample from them, not from the old ones
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.mul_(-3.0)
        trainer.state.global_step = 1
        second = engine(trainer, [prompt], [24], stop)
        assert engine.synced_step == 1
        assert second[0].ids == _greedy(policy, prompt, 24, stop)
        assert second[0].ids != first[0].ids
    finally:
        engine.close()


def _greedy(model: Any, prompt: list[int], limit: int, stop: list[int]) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=limit,
            do_sample=False,
            eos_token_id=stop,
            pad_token_id=stop[0],
        )
    ids = [int(t) for t in out[0, len(prompt) :]]
    for i, token in enumerate(ids):
        if token in stop:
            return ids[: i + 1]
    return ids


def test_the_embedded_backend_refuses_what_it_cannot_sample(tmp_path: Path) -> None:
    for field, value in (("top_p", 0.9), ("top_k", 50), ("min_p", 0.1)):
        with pytest.raises(ConfigError, match=f"temperature only.*{field}"):
            config(tmp_path, generation_backend="embedded", **{field: value})
    with pytest.raises(ConfigError, match="keep one"):
        config(tmp_path, generation_backend="embedded", use_vllm=True)
    with pytest.raises(ConfigError, match="generation_backend='gpu'"):
        config(tmp_path, generation_backend="gpu")
    assert config(tmp_path, generation_backend="embedded").generation_backend == "embedded"


@pytest.mark.train
@pytest.mark.usefixtures("one_torch_thread")
def test_short_grpo_run_on_the_embedded_engine(tmp_path: Path) -> None:
    """``run_grpo`` with ``generation_backend: embedded``: the engine gets the policy's weights
    every step and, from the second step on, serves the shared system prompt from its cache."""
    server = ActorServer().start()
    cfg = config(
        tmp_path,
        toolactor_url=server.url,
        generation_backend="embedded",
        dataset_limit=4,
        num_generations=2,
        per_device_train_batch_size=2,
        max_steps=2,
        max_completion_length=24,
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
    assert by_step(rows, "engine/weight_syncs") == [1.0, 1.0]
    shares = by_step(rows, "engine/prefix_hit_share")
    assert len(shares) == 2 and shares[-1] > 0.3, shares  # the system prompt, ~300 tokens
    assert all(0 < v <= 24 for v in by_step(rows, "completions/mean_length"))
    assert all(v > 0 for v in by_step(rows, "timing/generation_s"))
