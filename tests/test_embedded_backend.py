"""EmbeddedBackend on the real packaged model: constrained, reproducible, batched."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import pytest_asyncio
import torch
from jsonschema import Draft202012Validator

from tests.conftest import packaged_model_dir
from toolsim.config import CommonSettings
from toolsim.errors import InvalidRequestError
from toolsim.llm.base import Generation, GenerationRequest
from toolsim.llm.embedded import EmbeddedBackend
from toolsim.llm.factory import build_backend
from toolsim.llm.prefix_cache import PrefixCache, shared_prefixes

pytestmark = pytest.mark.slow


SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "temperature_c": {"type": "integer"},
        "conditions": {"type": "string", "enum": ["sunny", "cloudy", "rain", "snow"]},
    },
    "required": ["city", "temperature_c", "conditions"],
    "additionalProperties": False,
}


def weather(city: str, **kwargs: Any) -> GenerationRequest:
    messages = [
        {"role": "system", "content": "You simulate tools. Reply with the tool's JSON result."},
        {"role": "user", "content": f"get_weather(city={city!r}) returned:"},
    ]
    kwargs.setdefault("json_schema", SCHEMA)
    kwargs.setdefault("max_tokens", 64)
    return GenerationRequest(messages=messages, **kwargs)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def backend() -> AsyncIterator[EmbeddedBackend]:
    b = EmbeddedBackend(packaged_model_dir(), max_batch_size=16, batch_wait_ms=20.0)
    await b.start()
    assert await b.ready()
    yield b
    await b.aclose()
    assert not await b.ready()


@pytest.mark.asyncio(loop_scope="module")
async def test_schema_constrained_output_is_valid_json(backend: EmbeddedBackend) -> None:
    out = await backend.generate(weather("Oslo", seed=3, temperature=0.8))
    assert out.finish_reason == "stop"
    Draft202012Validator(SCHEMA).validate(json.loads(out.text))
    assert out.prompt_tokens > 0 and out.completion_tokens > 0
    assert out.text.startswith('{"city":'), "output should be compact JSON in schema order"


@pytest.mark.asyncio(loop_scope="module")
async def test_same_seed_same_text(backend: EmbeddedBackend) -> None:
    first = await backend.generate(weather("Lima", seed=42, temperature=1.0))
    second = await backend.generate(weather("Lima", seed=42, temperature=1.0))
    assert first == second
    greedy = [await backend.generate(weather("Lima", temperature=0.0)) for _ in range(2)]
    assert greedy[0] == greedy[1]


@pytest.mark.asyncio(loop_scope="module")
async def test_concurrent_requests_are_batched(backend: EmbeddedBackend) -> None:
    before = backend.stats_snapshot()
    cities = ["Oslo", "Lima", "Cairo", "Quito", "Dakar", "Perth", "Hanoi", "Minsk"]
    outs = await asyncio.gather(
        *(backend.generate(weather(c, seed=i, temperature=0.7)) for i, c in enumerate(cities))
    )
    validator = Draft202012Validator(SCHEMA)
    for out in outs:
        if out.finish_reason == "stop":
            validator.validate(json.loads(out.text))
    after = backend.stats_snapshot()
    prefills = after.prefill_passes - before.prefill_passes
    steps = after.decode_steps - before.decode_steps
    tokens = after.completion_tokens - before.completion_tokens
    # a delta: max_batch_size is a running maximum an earlier test may have set; every output
    # here is longer than 4 tokens, so 8 rows decoded together give at least 4 such steps
    wide = after.decode_steps_with(4) - before.decode_steps_with(4)
    assert wide >= 4, f"{wide} decode steps of 4+ rows: concurrent requests not decoded together"
    assert prefills < len(cities), f"{prefills} admission batches for {len(cities)} requests"
    assert steps < tokens / 2, f"{steps} decode steps for {tokens} tokens: not batched"


@pytest.mark.asyncio(loop_scope="module")
async def test_choices_returns_one_of_them(backend: EmbeddedBackend) -> None:
    choices = ["yes", "no", 'it "depends"\n']
    messages = [{"role": "user", "content": "Is the sky blue? Answer yes or no."}]
    for seed in range(3):
        out = await backend.generate(
            GenerationRequest(messages=messages, choices=choices, seed=seed, temperature=1.0)
        )
        assert out.text in choices
        assert out.finish_reason == "stop"


@pytest.mark.asyncio(loop_scope="module")
async def test_tiny_max_tokens_finishes_with_length(backend: EmbeddedBackend) -> None:
    out = await backend.generate(weather("Cairo", max_tokens=3))
    assert out.finish_reason == "length"
    assert out.completion_tokens == 3
    assert out.text.startswith("{")


@pytest.mark.asyncio(loop_scope="module")
async def test_unconstrained_generation(backend: EmbeddedBackend) -> None:
    out = await backend.generate(
        GenerationRequest(
            messages=[{"role": "user", "content": "Say hello."}], temperature=0.0, max_tokens=16
        )
    )
    assert out.text.strip()
    assert out.completion_tokens <= 16


@pytest.mark.asyncio(loop_scope="module")
async def test_bad_schema_fails_only_its_own_request(backend: EmbeddedBackend) -> None:
    bad, good = await asyncio.gather(
        backend.generate(weather("Quito", json_schema={"type": "no-such-type"})),
        backend.generate(weather("Quito", seed=1)),
        return_exceptions=True,
    )
    assert isinstance(bad, InvalidRequestError)
    assert not isinstance(good, BaseException)
    Draft202012Validator(SCHEMA).validate(json.loads(good.text))
    assert await backend.ready()


# ---------------------------------------------------------------------- prefix caching

AGENT_SYSTEM = (
    "You are a research agent. Answer the user's question with the search tool, one call at a "
    "time, then give the final answer in <answer></answer> tags.\n# Tools\n"
    + json.dumps(
        {
            "type": "function",
            "function": {
                "name": "search",
                "description": "Search Wikipedia; returns the most relevant passages",
                "parameters": {
                    "type": "object",
                    "properties": {"query": {"type": "string", "description": "Keywords."}},
                    "required": ["query"],
                },
            },
        }
    )
    + "\nRules: "
    + " ".join(f"({i}) cite the passage you used; keep it short." for i in range(12))
)
OBSERVATION = (
    "<tool_response>"
    + " ".join(
        f"Passage {i}: the river Ems is {300 + i} km long and flows into the North Sea."
        for i in range(6)
    )
    + "</tool_response>"
)


async def episode(backend: EmbeddedBackend, question: str, *, turns: int = 3) -> list[Generation]:
    """A multi-turn agent episode: each turn a new request, the whole conversation again."""
    messages = [{"role": "system", "content": AGENT_SYSTEM}, {"role": "user", "content": question}]
    outs: list[Generation] = []
    for _ in range(turns):
        out = await backend.generate(
            GenerationRequest(messages=messages, temperature=0.0, max_tokens=16)
        )
        outs.append(out)
        messages = [
            *messages,
            {"role": "assistant", "content": out.text},
            {"role": "user", "content": OBSERVATION},
        ]
    return outs


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def exact() -> AsyncIterator[tuple[EmbeddedBackend, EmbeddedBackend]]:
    """float32 engines without and with the prefix cache: their greedy outputs must agree."""
    off = EmbeddedBackend(
        packaged_model_dir(), dtype="float32", batch_wait_ms=20.0, prefix_cache_bytes=0
    )
    on = EmbeddedBackend(packaged_model_dir(), dtype="float32", batch_wait_ms=20.0)
    await off.start()
    await on.start()
    yield off, on
    await off.aclose()
    await on.aclose()


def test_prefix_cache_bytes_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="prefix_cache_bytes"):
        EmbeddedBackend(packaged_model_dir(), prefix_cache_bytes=-1)


def test_prefix_cache_size_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """``TOOLSIM_EMBEDDED_PREFIX_CACHE_BYTES`` reaches the engine the services build."""
    monkeypatch.setenv("TOOLSIM_MODEL_DIR", str(packaged_model_dir()))
    monkeypatch.setenv("TOOLSIM_EMBEDDED_PREFIX_CACHE_BYTES", "12345")
    backend = build_backend(CommonSettings())
    assert isinstance(backend, EmbeddedBackend)
    assert backend._prefix.max_bytes == 12345
    monkeypatch.setenv("TOOLSIM_EMBEDDED_PREFIX_CACHE_BYTES", "-1")
    with pytest.raises(ValueError, match="embedded_prefix_cache_bytes"):
        CommonSettings()


def _blocks(kv: torch.Tensor) -> list[torch.Tensor]:
    return [kv[:, :, :, i : i + 16] for i in range(0, kv.shape[3], 16)]


def test_prefix_store_shares_blocks_and_evicts_children_first() -> None:
    """The block store alone: hashed chains, the last token held back, LRU by bytes."""
    block_bytes = 2 * 16 * 4  # [1 layer, 2, 1 head, 16 tokens, 1 dim] of float32
    cache = PrefixCache(max_bytes=5 * block_bytes)
    calls: list[tuple[int, int]] = []

    def gather_for(seq: list[int]) -> Any:
        def gather(start: int, end: int) -> torch.Tensor:
            calls.append((start, end))
            pos = torch.tensor(seq[start:end], dtype=torch.float32)
            return torch.stack([pos, -pos]).reshape(1, 2, 1, end - start, 1)

        return gather

    a = list(range(40))  # 2 whole blocks and 8 tokens
    cache.store(a, gather_for(a))
    assert calls == [(0, 32)] and len(cache) == 2 and cache.bytes == 2 * block_bytes
    got = cache.match([*a, 99], limit=41)
    assert [b[0, 0, 0, :, 0].tolist() for b in got] == [a[:16], a[16:32]]
    assert len(cache.match(a[:32], limit=31)) == 1, "the last token must stay out"
    assert cache.match([7, *a[1:]], limit=40) == [], "a different first block is a miss"

    b = a[:16] + [1000 + i for i in range(32)]  # shares the first block only
    cache.store(b, gather_for(b))
    assert calls[-1] == (16, 48), "only the blocks not held are gathered"
    assert len(cache) == 4
    c = [2000 + i for i in range(32)]
    cache.store(c, gather_for(c))  # 6 blocks > 5: the oldest leaf (a's second block) goes
    assert len(cache) == 5 and cache.evicted == 1 and cache.bytes == 5 * block_bytes
    assert len(cache.match(a, limit=40)) == 1, "a's first block is b's parent: kept"
    assert len(cache.match(b, limit=48)) == 3
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0


@pytest.mark.asyncio(loop_scope="module")
async def test_prefix_cache_keeps_greedy_multi_turn_outputs(
    exact: tuple[EmbeddedBackend, EmbeddedBackend],
) -> None:
    """Concurrent 3-turn episodes sharing a system prompt: same tokens with the cache on,
    and most of the prompt tokens come from the cache."""
    off, on = exact
    questions = ["How long is the Ems?", "Where does the Ems flow?", "Is the Ems in Germany?"]
    before_off, before_on = off.stats_snapshot(), on.stats_snapshot()
    want = await asyncio.gather(*(episode(off, q) for q in questions))
    got = await asyncio.gather(*(episode(on, q) for q in questions))
    assert got == want  # text, token ids, stop token, counts
    s_off, s_on = off.stats_snapshot(), on.stats_snapshot()
    assert s_off.prefix_lookups == 0 and s_off.prefix_hit_tokens == 0
    assert s_off.prefix_cache_bytes == 0
    prompts = s_on.prompt_tokens - before_on.prompt_tokens
    hits = s_on.prefix_hit_tokens - before_on.prefix_hit_tokens
    prefilled = s_on.prefilled_tokens - before_on.prefilled_tokens
    assert s_on.prefix_lookups - before_on.prefix_lookups == 3 * len(questions)
    shared = s_on.prefix_shared_tokens - before_on.prefix_shared_tokens
    assert hits + prefilled - shared == prompts
    assert prefilled - shared == s_off.prefilled_tokens - before_off.prefilled_tokens - hits
    assert hits > prompts / 2, f"{hits} of {prompts} prompt tokens from the cache"
    assert s_on.prefix_cache_bytes > 0


@pytest.mark.asyncio(loop_scope="module")
async def test_prefix_cache_first_step_logits_match(
    exact: tuple[EmbeddedBackend, EmbeddedBackend],
) -> None:
    """One episode, one request at a time: the logits of every prefill agree within 1e-3."""
    recorded: dict[str, list[torch.Tensor]] = {"off": [], "on": []}
    handles = []
    for name, backend in zip(recorded, exact, strict=True):

        def hook(_m: Any, _a: Any, kwargs: dict[str, Any], out: Any, name: str = name) -> None:
            if "logits_to_keep" in kwargs:  # a prefill, not a decode step
                recorded[name].append(out.logits[:, -1].float().clone())

        assert backend._model is not None
        handles.append(backend._model.register_forward_hook(hook, with_kwargs=True))
    try:
        off, on = exact
        before = on.stats_snapshot()
        want = await episode(off, "Which sea does the Ems reach?")
        got = await episode(on, "Which sea does the Ems reach?")
    finally:
        for handle in handles:
            handle.remove()
    assert got == want
    assert len(recorded["on"]) == len(recorded["off"]) == 3
    for turn, (a, b) in enumerate(zip(recorded["off"], recorded["on"], strict=True)):
        diff = float((a - b).abs().max())
        assert diff < 1e-3, f"turn {turn}: first-step logits differ by {diff}"
    # turns 2 and 3 reuse the turn before them, turn 1 the system prompt of other episodes
    hits = on.stats_snapshot().prefix_hit_tokens - before.prefix_hit_tokens
    assert hits >= 2 * (want[0].prompt_tokens // 16) * 16


def test_shared_prefixes_of_a_group() -> None:
    system, q1, q2 = list(range(40)), [100 + i for i in range(20)], [200 + i for i in range(9)]
    prompts = [system + q1, system + q2, system + q1, [7, 8, 9], [*system, *q1, 5]]
    # system + q1 twice: 59 tokens, the last held back -> 48; system + q1 + [5] shares the
    # same 48; system + q2 shares 40 -> 32 with them, a prefix of the 48: dropped
    assert shared_prefixes(prompts, 16) == [(system + q1)[:48]]
    assert shared_prefixes([system + q1, system + q2], 16) == [system[:32]]
    assert shared_prefixes([q1, q2], 16) == []


@pytest.mark.asyncio(loop_scope="module")
async def test_a_group_prefills_its_shared_prefix_once(
    exact: tuple[EmbeddedBackend, EmbeddedBackend],
) -> None:
    """Rows admitted together that share an uncached system prompt (GRPO's rollouts of one
    prompt, an evaluation's first group): it is prefilled once, outputs unchanged."""
    off, on = exact
    system = "You are a careful geographer. " + " ".join(
        f"Fact {i}: river {i} is {100 + 7 * i} km long." for i in range(12)
    )
    requests = [
        GenerationRequest(
            messages=[
                {"role": "system", "content": system},
                {"role": "user", "content": f"How long is river {i}?"},
            ],
            temperature=0.0,
            max_tokens=8,
        )
        for i in range(4)
    ]
    before = on.stats_snapshot()
    want = await asyncio.gather(*(off.generate(r) for r in requests))
    got = await asyncio.gather(*(on.generate(r) for r in requests))
    assert got == want
    after = on.stats_snapshot()
    assert after.prefill_passes - before.prefill_passes == 1, "not admitted as one group"
    assert after.prefix_shared_passes - before.prefix_shared_passes == 1
    shared = after.prefix_shared_tokens - before.prefix_shared_tokens
    assert shared >= 64
    assert after.prefix_hit_tokens - before.prefix_hit_tokens >= 4 * shared, "not reused"


@pytest.mark.asyncio(loop_scope="module")
async def test_prefix_cache_with_constrained_generation(
    exact: tuple[EmbeddedBackend, EmbeddedBackend],
) -> None:
    off, on = exact
    cities = ["Oslo", "Lima", "Oslo", "Cairo"]
    for backend in exact:  # twice each: the second round hits the first round's blocks
        await asyncio.gather(*(backend.generate(weather(c, temperature=0.0)) for c in cities))
    before = on.stats_snapshot()
    want = await asyncio.gather(*(off.generate(weather(c, temperature=0.0)) for c in cities))
    got = await asyncio.gather(*(on.generate(weather(c, temperature=0.0)) for c in cities))
    assert got == want
    for out in got:
        Draft202012Validator(SCHEMA).validate(json.loads(out.text))
    assert on.stats_snapshot().prefix_hit_tokens - before.prefix_hit_tokens > 0


# ---------------------------------------------------------------------- weight updates


def _weights(backend: EmbeddedBackend, part: str) -> dict[str, torch.Tensor]:
    assert backend._model is not None
    return {k: v.clone() for k, v in backend._model.state_dict().items() if part in k}


async def settled(backend: EmbeddedBackend) -> None:
    """Wait until the worker is past the rows that finished so far: a row's result is sent
    before its KV is cached, and the worker serves requests in order."""
    await backend.generate(GenerationRequest(messages=[], prompt_ids=[1, 2, 3], max_tokens=1))


HAIKU = GenerationRequest(
    messages=[{"role": "user", "content": "Write one sentence about autumn leaves."}],
    temperature=0.0,
    max_tokens=24,
)


@pytest.mark.asyncio(loop_scope="module")
async def test_update_weights_changes_and_restores_greedy_output(
    exact: tuple[EmbeddedBackend, EmbeddedBackend],
) -> None:
    _, on = exact
    original = _weights(on, "mlp.down_proj")
    baseline = await on.generate(HAIKU)
    updates = on.stats_snapshot().weight_updates
    noise = torch.Generator().manual_seed(0)
    perturbed = {k: v + 0.05 * torch.randn(v.shape, generator=noise) for k, v in original.items()}
    try:
        assert await on.update_weights(perturbed) == len(perturbed) == 30
        stats = on.stats_snapshot()
        assert stats.weight_updates == updates + 1
        assert stats.prefix_cache_bytes == 0 and len(on._prefix) == 0, "stale KV kept"
        changed = await on.generate(HAIKU)
        assert changed.text != baseline.text
    finally:
        assert await on.update_weights(original) == len(original)
    assert await on.generate(HAIKU) == baseline


@pytest.mark.asyncio(loop_scope="module")
async def test_update_weights_keeps_in_flight_rows_out_of_the_cache(
    exact: tuple[EmbeddedBackend, EmbeddedBackend],
) -> None:
    _, on = exact
    same = _weights(on, "model.norm.weight")
    admitted = on.stats_snapshot().prefill_passes
    long = replace(
        HAIKU,
        max_tokens=48,
        messages=[{"role": "user", "content": "Write a long essay on the history of Rome."}],
    )
    task = asyncio.ensure_future(on.generate(long))
    while on.stats_snapshot().prefill_passes == admitted:  # noqa: ASYNC110 - a thread's counter
        await asyncio.sleep(0.005)
    assert await on.update_weights(same) == 1
    out = await task
    assert out.completion_tokens == 48, "the row should still be decoding at the update"
    await settled(on)  # (3 tokens: no whole block to cache)
    assert on.stats_snapshot().prefix_cache_bytes == 0 and len(on._prefix) == 0


@pytest.mark.asyncio(loop_scope="module")
async def test_update_weights_refuses_bad_names_and_shapes(
    exact: tuple[EmbeddedBackend, EmbeddedBackend],
) -> None:
    _, on = exact
    await on.generate(HAIKU)  # something in the prefix cache, to see it is kept
    await settled(on)
    name = "model.layers.0.self_attn.q_proj.weight"
    kept = _weights(on, name)[name]
    before = on.stats_snapshot()
    with pytest.raises(ValueError, match=re.escape("no.such.weight")):
        await on.update_weights({name: kept + 1.0, "no.such.weight": kept})
    with pytest.raises(ValueError, match=re.escape("model.norm.weight")):
        await on.update_weights({name: kept + 1.0, "model.norm.weight": torch.zeros(3)})
    assert torch.equal(_weights(on, name)[name], kept), "a refused update changed a weight"
    after = on.stats_snapshot()
    assert after.weight_updates == before.weight_updates
    assert after.prefix_cache_bytes == before.prefix_cache_bytes > 0
