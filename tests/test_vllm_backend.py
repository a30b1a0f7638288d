"""VLLMBackend's HTTP contract, against httpx.MockTransport (the real server: test_integration_vllm)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import WEATHER_OUTPUT, WEATHER_TOOL, free_port, tool_call
from toolsim.errors import BackendUnavailableError, GenerationFailedError
from toolsim.llm.base import GenerationRequest
from toolsim.llm.vllm import VLLMBackend

REQUEST = GenerationRequest(
    [{"role": "user", "content": "hi"}], WEATHER_OUTPUT, seed=7, temperature=0.5, max_tokens=99
)


def completion(content: str, finish: str = "stop") -> dict[str, Any]:
    return {
        "choices": [
            {"message": {"role": "assistant", "content": content}, "finish_reason": finish}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3},
    }


async def test_payload_carries_schema_seed_and_limits() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        assert request.url.path == "/v1/chat/completions"
        return httpx.Response(200, json=completion('{"a": 1}'))

    backend = VLLMBackend("http://x/v1", "smollm2", transport=httpx.MockTransport(handler))
    generation = await backend.generate(REQUEST)
    assert generation.text == '{"a": 1}' and generation.finish_reason == "stop"
    assert generation.prompt_tokens == 5 and generation.completion_tokens == 3
    payload = seen[0]
    assert payload["seed"] == 7 and payload["temperature"] == 0.5 and payload["max_tokens"] == 99
    assert payload["model"] == "smollm2"
    assert payload["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "observation", "schema": WEATHER_OUTPUT},
    }
    assert "guided_json" not in payload
    await backend.aclose()


async def test_choices_use_structured_outputs() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json=completion("b"))

    backend = VLLMBackend("http://x/v1", "m", transport=httpx.MockTransport(handler))
    await backend.generate(
        GenerationRequest([{"role": "user", "content": "?"}], choices=["a", "b"])
    )
    assert seen[0]["structured_outputs"] == {"choice": ["a", "b"]}
    assert "response_format" not in seen[0]


async def test_retries_503_and_connection_errors_then_succeeds() -> None:
    answers = iter(
        [
            httpx.ConnectError("refused"),
            httpx.Response(503),
            httpx.Response(200, json=completion("{}")),
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    backend = VLLMBackend(
        "http://x/v1", "m", connect_retries=2, transport=httpx.MockTransport(handler)
    )
    assert (await backend.generate(REQUEST)).text == "{}"


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, GenerationFailedError), (500, BackendUnavailableError), (503, BackendUnavailableError)],
)
async def test_status_errors(status: int, error: type[Exception]) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(status, text="nope")

    backend = VLLMBackend(
        "http://x/v1", "m", connect_retries=1, transport=httpx.MockTransport(handler)
    )
    with pytest.raises(error):
        await backend.generate(REQUEST)
    assert len(calls) == (2 if status == 503 else 1)  # only 502/503 are retried


async def test_timeout_is_not_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ReadTimeout("slow")

    backend = VLLMBackend(
        "http://x/v1", "m", connect_retries=3, transport=httpx.MockTransport(handler)
    )
    with pytest.raises(BackendUnavailableError, match="timed out"):
        await backend.generate(REQUEST)
    assert len(calls) == 1


async def test_toolactor_with_unreachable_server_answers_503_quickly() -> None:
    """A real socket nobody listens on: connection refused, retried, then 503 with Retry-After."""
    from toolsim_toolactor import ActorSettings, create_app

    port = free_port()
    app = create_app(
        ActorSettings(backend="vllm", vllm_url=f"http://127.0.0.1:{port}/v1", llm_connect_retries=1)
    )
    async with app.router.lifespan_context(app):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a")
        r = await client.post(
            "/v1/tool_calls",
            json={
                "tools": [WEATHER_TOOL],
                "tool_calls": [tool_call("get_weather", '{"city": "Oslo"}')],
            },
        )
        assert r.status_code == 503 and r.json()["error"]["code"] == "backend_unavailable"
        assert r.headers["retry-after"]
        ready = await client.get("/ready")
        assert ready.status_code == 503 and ready.json()["backend"]["ok"] is False
        await client.aclose()


def test_settings_reject_bad_urls() -> None:
    from pydantic import ValidationError

    from toolsim_toolactor import ActorSettings

    with pytest.raises(ValidationError, match="redis://"):
        ActorSettings(redis_url="localhost:6379")
    with pytest.raises(ValidationError, match="http"):
        ActorSettings(backend="vllm", vllm_url="vllm:8000")
