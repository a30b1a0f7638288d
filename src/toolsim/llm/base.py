"""The LLM backend seam: one abstract client, two real implementations.

``VLLMBackend`` talks to any OpenAI-compatible server over HTTP (vLLM in production);
``EmbeddedBackend`` runs the packaged model in process with xgrammar-constrained decoding.
Callers hold an ``LLMBackend`` and never know which one it is.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class GenerationRequest:
    """One chat generation, optionally constrained to a JSON Schema."""

    messages: list[dict[str, str]]
    json_schema: dict[str, Any] | None = None
    seed: int = 0
    temperature: float = 0.7
    max_tokens: int = 256
    presence_penalty: float = 0.0
    """Subtracted from the logit of every token the completion already holds (OpenAI's
    ``presence_penalty``): discourages writing the same value twice."""
    choices: list[str] | None = field(default=None)
    """When set, the output must be exactly one of these strings (choice-constrained)."""
    prompt_ids: list[int] | None = field(default=None)
    """Token ids of an already-templated prompt (ending in the generation prompt). When set,
    the backend applies no chat template and ``messages`` is ignored (it may be empty): for a
    caller that owns its template, such as a policy rendered with TRL's Qwen2.5 template.
    Only backends that run the tokenizer themselves (embedded) accept it."""


@dataclass(frozen=True)
class Generation:
    """The text a backend produced and why it stopped."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int = 0
    completion_tokens: int = 0
    token_ids: tuple[int, ...] | None = None
    """The generated token ids, without the stop token (backends that run the tokenizer
    themselves report them; a trainer needs the exact ids it sampled)."""
    stop_token_id: int | None = None
    """The token that stopped the generation, when a stop token did."""


class LLMBackend(abc.ABC):
    """An engine client: turns a ``GenerationRequest`` into a ``Generation``.

    Implementations raise ``toolsim.errors.BackendUnavailableError`` when the engine cannot
    be reached or times out, never a transport-specific exception.
    """

    model_name: str

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest) -> Generation:
        """Generate one completion."""

    @abc.abstractmethod
    async def ready(self) -> bool:
        """Whether the engine can take requests now (cheap; used by ``/ready``)."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load or connect; called once from the service lifespan."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources; called once from the service lifespan."""


class DelegatingBackend(LLMBackend):
    """A backend in front of another: everything is passed to ``inner``; a subclass overrides
    what it adds to (``BoundedBackend``'s deadline and cap, a benchmark's counting)."""

    def __init__(self, inner: LLMBackend) -> None:
        self.inner = inner
        self.model_name = inner.model_name

    async def generate(self, request: GenerationRequest) -> Generation:
        return await self.inner.generate(request)

    async def ready(self) -> bool:
        return await self.inner.ready()

    async def start(self) -> None:
        await self.inner.start()

    async def aclose(self) -> None:
        await self.inner.aclose()
