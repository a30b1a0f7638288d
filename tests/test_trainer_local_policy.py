"""LocalPolicy: the Qwen2.5-templated prompt, generation through the batching engine, LoRA merge.

The references are plain transformers (greedy ``generate``) and PEFT (the unmerged adapter), in
float32 so that the engine and the reference compute the same numbers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import torch

from tests.conftest import packaged_model_dir
from toolsim.errors import InvalidRequestError
from toolsim.llm.base import GenerationRequest
from toolsim_trainer import local_policy
from toolsim_trainer.chat_template import load_tokenizer
from toolsim_trainer.evaluate import SEARCH_TOOL
from toolsim_trainer.grammar import (
    AssistantTurn,
    ToolCallItem,
    ToolResponse,
    ToolTurn,
    Trace,
    trace_to_messages,
)
from toolsim_trainer.local_policy import LocalPolicy, LocalPolicyError

QUESTIONS = [
    "Who is the director of film Revenge of the Ninja?",
    "Who is the father of Emperor Taizong Of Song?",
    "When did Cezaria Jędrzejewiczowa's father die?",
    "Who is Ahmose-Henutemipet's paternal grandmother?",
]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """The references run in this thread: one torch thread, as the engine's (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def messages(question: str) -> list[dict[str, Any]]:
    return trace_to_messages(Trace(question=question))


def reference_greedy(model: Any, ids: list[int], max_new: int) -> list[int]:
    """transformers' own greedy decoding, stopped at <|im_end|> (id 2) like the engine."""
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=2,
            pad_token_id=2,
        )
    new = out[0, len(ids) :].tolist()
    return new[: new.index(2)] if 2 in new else new


def test_prompt_is_the_qwen25_template_tools_only_when_given() -> None:
    policy = LocalPolicy(packaged_model_dir())
    tokenizer = load_tokenizer(packaged_model_dir())
    trace = Trace(
        question=QUESTIONS[0],
        turns=[
            AssistantTurn("search it", (ToolCallItem("search", {"query": "Revenge of the Ninja"}, "call_0_0"),)),
            ToolTurn((ToolResponse("call_0_0", '{"results": []}'),)),
        ],
    )  # fmt: skip
    msgs = trace_to_messages(trace)
    with_tools = tokenizer.decode(policy.prompt_ids(msgs, [SEARCH_TOOL]))
    assert with_tools == tokenizer.apply_chat_template(
        msgs, tools=[SEARCH_TOOL], add_generation_prompt=True, tokenize=False
    )
    assert '"name": "search"' in with_tools and "# Tools" in with_tools
    assert (
        '<tool_call>\n{"name": "search", "arguments": {"query": "Revenge of the Ninja"}}\n</tool_call>'
        in with_tools
    )
    assert (
        '<|im_start|>user\n<tool_response>\n{"results": []}\n</tool_response><|im_end|>'
        in with_tools
    )
    assert with_tools.endswith("<|im_start|>assistant\n")
    assert "# Tools" not in tokenizer.decode(policy.prompt_ids(msgs, []))


def test_unusable_folders_say_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(LocalPolicyError, match=r"holds no model.*toolsim model fetch"):
        LocalPolicy(tmp_path)
    with pytest.raises(LocalPolicyError, match=r"adapter_config\.json.*final/"):
        LocalPolicy(packaged_model_dir(), adapter=tmp_path)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def policy() -> AsyncIterator[LocalPolicy]:
    p = LocalPolicy(packaged_model_dir(), dtype="float32", max_batch_size=8, num_threads=1)
    await p.start()
    yield p
    await p.aclose()


@pytest.fixture(scope="module")
def hf_model() -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(packaged_model_dir()), dtype=torch.float32, local_files_only=True
    ).eval()


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_greedy_text_is_transformers_greedy_stopped_at_im_end(
    policy: LocalPolicy, hf_model: Any
) -> None:
    msgs = messages(QUESTIONS[0])
    out = await policy.complete(msgs, [], seed=0, temperature=0.0, max_tokens=48)
    expected = reference_greedy(hf_model, policy.prompt_ids(msgs, []), 48)
    assert out.text == policy.tokenizer.decode(expected)
    assert out.finish_reason == "stop" and out.completion_tokens == len(expected) < 48
    assert "<|im_end|>" not in out.text and out.latency_s > 0
    short = await policy.complete(msgs, [], seed=0, temperature=0.0, max_tokens=5)
    assert short.finish_reason == "length" and short.completion_tokens == 5
    assert out.text.startswith(short.text)


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_concurrent_turns_share_batches_and_match_one_by_one(policy: LocalPolicy) -> None:
    async def turn(q: str) -> str:
        out = await policy.complete(
            messages(q), [SEARCH_TOOL], seed=0, temperature=0.0, max_tokens=16
        )
        return out.text

    assert policy.backend is not None
    together = await asyncio.gather(*(turn(q) for q in QUESTIONS[1:]))
    assert policy.backend.stats.max_batch_size >= 2  # they shared decode steps
    alone = [await turn(q) for q in QUESTIONS[1:]]
    assert together == alone


@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_engine_rejects_bad_prompt_ids_and_keeps_the_messages_check(
    policy: LocalPolicy,
) -> None:
    assert policy.backend is not None
    with pytest.raises(InvalidRequestError, match="prompt_ids must lie in"):
        await policy.backend.generate(GenerationRequest(messages=[], prompt_ids=[1, 10**7]))
    with pytest.raises(InvalidRequestError, match="prompt_ids must not be empty"):
        await policy.backend.generate(GenerationRequest(messages=[], prompt_ids=[]))
    with pytest.raises(InvalidRequestError, match="messages must not be empty"):
        await policy.backend.generate(GenerationRequest(messages=[]))


def make_adapter(run_dir: Path, scale: float) -> Path:
    """A LoRA adapter with small random weights, saved as a training run's final/."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(
        str(packaged_model_dir()), dtype=torch.float32, local_files_only=True
    )
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(scale)
    final = run_dir / "final"
    model.save_pretrained(str(final))
    return final


@pytest.mark.slow
async def test_adapter_is_merged_once_and_equals_the_peft_model(
    tmp_path: Path, hf_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    final = make_adapter(tmp_path / "run", scale=0.5)
    cache = tmp_path / "cache"
    policy = LocalPolicy(
        packaged_model_dir(),
        adapter=tmp_path / "run",
        cache_dir=cache,
        dtype="float32",
        num_threads=1,
    )
    assert policy.adapter_dir == final  # a run folder resolves to its final/
    msgs = messages(QUESTIONS[1])
    try:
        out = await policy.complete(msgs, [], seed=0, temperature=0.0, max_tokens=24)
        assert policy.backend is not None
        merged_dir = policy.backend.model_path
    finally:
        await policy.aclose()
    assert merged_dir.parent == cache / "merged" and (merged_dir / "config.json").is_file()

    ids = torch.tensor([policy.prompt_ids(msgs, [])])
    merged = AutoModelForCausalLM.from_pretrained(
        str(merged_dir), dtype=torch.float32, local_files_only=True
    ).eval()
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(
            str(packaged_model_dir()), dtype=torch.float32, local_files_only=True
        ),
        str(final),
    ).eval()
    with torch.inference_mode():
        merged_logits, peft_logits = merged(ids).logits, peft_model(ids).logits
        base_logits = hf_model(ids).logits
    assert torch.allclose(merged_logits, peft_logits, atol=1e-3)
    assert (merged_logits - base_logits).abs().max() > 0.1  # the adapter changed the model
    assert out.text == policy.tokenizer.decode(reference_greedy(merged, ids[0].tolist(), 24))

    def no_merge(*args: object) -> None:
        raise AssertionError("the merged folder should have been reused")

    monkeypatch.setattr(local_policy, "_merge_into", no_merge)
    again = LocalPolicy(
        packaged_model_dir(), adapter=final, cache_dir=cache, dtype="float32", num_threads=1
    )
    try:
        second = await again.complete(msgs, [], seed=0, temperature=0.0, max_tokens=24)
        assert again.backend is not None and again.backend.model_path == merged_dir
    finally:
        await again.aclose()
    assert second.text == out.text


def test_adapter_digest_follows_the_adapter_bytes(tmp_path: Path) -> None:
    adapter = tmp_path / "a"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"one")
    first = local_policy.adapter_digest(adapter, packaged_model_dir())
    assert local_policy.adapter_digest(adapter, packaged_model_dir()) == first
    (adapter / "adapter_model.safetensors").write_bytes(b"two")
    assert local_policy.adapter_digest(adapter, packaged_model_dir()) != first
