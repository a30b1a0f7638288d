"""The policy seam: whatever writes assistant turns (a teacher, a repairer, a trained policy).

A ``Policy`` turns a conversation into the next assistant turn's text in the trace grammar.
``OpenAIPolicy`` drives any OpenAI-compatible chat endpoint (a vLLM server, a hosted API);
``toolsim_trainer.local_policy.LocalPolicy`` runs a local model folder (plus a LoRA adapter)
in process. Callers never know which one they hold.

``OpenAIPolicy`` has two modes:

- ``text``: the grammar travels in the message text (tool turns become ``user`` messages of
  ``<tool_response>`` blocks, the tools are listed in the system prompt as the Qwen2.5
  template lists them). Works with any chat endpoint, whatever its tool-call support.
- ``native``: OpenAI tool calling (``tools`` in the request, ``tool_calls`` in the answer), for
  hosted APIs and for a policy served by vLLM with ``--tool-call-parser hermes``. The answer's
  ``tool_calls`` are rendered back into the grammar, so traces look the same either way.
"""

from __future__ import annotations

import abc
import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from toolsim_trainer.clients import ServiceUnavailableError
from toolsim_trainer.grammar import (
    AssistantTurn,
    ToolCallItem,
    messages_to_trace,
    render_call,
    render_turn,
)


class PolicyError(RuntimeError):
    """The policy endpoint failed after its retries (the question is marked failed)."""


@dataclass(frozen=True)
class PolicyOutput:
    text: str
    """The assistant turn in the trace grammar, without ``<|im_end|>``."""
    finish_reason: str
    completion_tokens: int = 0
    latency_s: float = 0.0


class Policy(abc.ABC):
    """Writes the next assistant turn of ``messages`` (OpenAI chat messages, object args)."""

    name: str

    @abc.abstractmethod
    async def complete(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        *,
        seed: int,
        temperature: float,
        max_tokens: int,
    ) -> PolicyOutput:
        """The next turn; raises ``PolicyError`` when the engine cannot answer."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load the model or reach the endpoint before the first question (fail fast)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


class OpenAIPolicy(Policy):
    """Any OpenAI-compatible ``/chat/completions`` endpoint."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        mode: Literal["text", "native"] = "text",
        timeout_s: float = 120.0,
        retries: int = 2,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.mode = mode
        self.retries = retries
        self.name = f"openai:{model}@{self.base_url}"
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(timeout=timeout_s, headers=headers)

    async def aclose(self) -> None:
        if self._own_http:
            await self.http.aclose()

    async def complete(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        *,
        seed: int,
        temperature: float,
        max_tokens: int,
    ) -> PolicyOutput:
        body: dict[str, Any] = {
            "model": self.model,
            "seed": seed,
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        if self.mode == "native":
            body["messages"] = _wire_messages(messages)
            if tools:
                body["tools"] = list(tools)
        else:
            body["messages"] = text_messages(messages, tools)
        started = time.perf_counter()
        payload = await self._post(body)
        try:
            choice = payload["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError) as exc:
            raise PolicyError(f"{self.name}: unexpected response {str(payload)[:300]}") from exc
        usage = payload.get("usage") or {}
        return PolicyOutput(
            text=_turn_text(message),
            finish_reason=str(choice.get("finish_reason") or "stop"),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            latency_s=time.perf_counter() - started,
        )

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}/chat/completions"
        last = ""
        for attempt in range(self.retries + 1):
            try:
                response = await self.http.post(url, json=body)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    result: dict[str, Any] = response.json()
                    return result
                last = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code not in (429, 500, 502, 503):
                    break
            if attempt < self.retries:
                await asyncio.sleep(0.5 * 2**attempt)
        raise PolicyError(f"{url}: {last}")


def _turn_text(message: dict[str, Any]) -> str:
    """The grammar text of an answer message (native ``tool_calls`` rendered as blocks)."""
    text = str(message.get("content") or "")
    for raw in message.get("tool_calls") or ():
        function = raw.get("function", {})
        args = function.get("arguments", "{}")
        try:
            parsed = json.loads(args) if isinstance(args, str) else args
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            text += render_call(ToolCallItem(str(function.get("name", "")), parsed))
        else:  # keep the broken call visible to the grammar check
            text += f"\n<tool_call>\n{args}\n</tool_call>"
    return text


def _wire_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI wire form: ``arguments`` as JSON strings."""
    out: list[dict[str, Any]] = []
    for message in messages:
        message = dict(message)
        if message.get("tool_calls"):
            message["tool_calls"] = [
                {
                    **c,
                    "function": {
                        "name": c["function"]["name"],
                        "arguments": c["function"]["arguments"]
                        if isinstance(c["function"]["arguments"], str)
                        else json.dumps(c["function"]["arguments"], ensure_ascii=False),
                    },
                }
                for c in message["tool_calls"]
            ]
        out.append(message)
    return out


def tools_block(tools: Sequence[dict[str, Any]]) -> str:
    """The tool list as the Qwen2.5 template writes it into the system prompt."""
    lines = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
    return (
        "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>{lines}\n</tools>"
    )


def text_messages(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]
) -> list[dict[str, str]]:
    """Plain system/user/assistant messages carrying the grammar as text."""
    trace = messages_to_trace(messages)
    out = [
        {"role": "system", "content": trace.system + (tools_block(tools) if tools else "")},
        {"role": "user", "content": trace.question},
    ]
    for turn in trace.turns:
        if isinstance(turn, AssistantTurn):
            out.append({"role": "assistant", "content": render_turn(turn)})
        else:
            blocks = "\n".join(
                f"<tool_response>\n{r.content}\n</tool_response>" for r in turn.responses
            )
            out.append({"role": "user", "content": blocks})
    return out


def check_endpoint(base_url: str) -> None:
    """Raise ``ServiceUnavailableError`` when ``base_url/models`` does not answer."""
    try:
        httpx.get(f"{base_url.rstrip('/')}/models", timeout=5.0).raise_for_status()
    except httpx.HTTPError as exc:
        raise ServiceUnavailableError(f"{base_url}/models does not answer: {exc}") from exc
