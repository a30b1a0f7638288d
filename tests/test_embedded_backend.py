"""EmbeddedBackend on the real packaged model: constrained, reproducible, batched."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from jsonschema import Draft202012Validator

from tests.conftest import packaged_model_dir
from toolsim.errors import InvalidRequestError
from toolsim.llm.base import GenerationRequest
from toolsim.llm.embedded import EmbeddedBackend

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
