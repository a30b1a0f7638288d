"""Turn one tool call into a valid observation with the LLM, or fail clearly.

A generation that ends by length, is not JSON, or breaks the output schema is retried with
a new seed, up to ``max_attempts`` generations; then ``GenerationFailedError``. What this
returns has always passed the output schema, so the caller may cache it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from toolsim.errors import BackendUnavailableError, GenerationFailedError
from toolsim.llm.base import GenerationRequest, LLMBackend
from toolsim.toolsets import Tool
from toolsim_toolactor.metrics import ActorMetrics
from toolsim_toolactor.prompt import EpisodeContext, build_messages

SEED_STRIDE = 1_000_003  # attempt k uses seed + k * stride: distinct, reproducible


class Simulator:
    def __init__(
        self,
        backend: LLMBackend,
        metrics: ActorMetrics,
        *,
        temperature: float,
        max_tokens: int,
        max_attempts: int,
        timeout_s: float,
        max_concurrent: int,
    ) -> None:
        self._backend = backend
        self._metrics = metrics
        self._temperature = temperature
        self._max_tokens = max_tokens
        self._max_attempts = max_attempts
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_concurrent)

    async def simulate(
        self, tool: Tool, arguments: dict[str, Any], episode: EpisodeContext | None, seed: int
    ) -> bytes:
        messages = build_messages(tool, arguments, episode)
        reasons: list[str] = []
        for attempt in range(self._max_attempts):
            if attempt:
                self._metrics.retries.labels(reasons[-1]).inc()
            request = GenerationRequest(
                messages=messages,
                json_schema=tool.output_schema,
                seed=(seed + attempt * SEED_STRIDE) % 2**31,
                temperature=self._temperature,
                max_tokens=self._max_tokens,
            )
            text, finish = await self._generate(request)
            observation, reason = self._check(tool, text, finish)
            if observation is not None:
                return observation
            reasons.append(reason)
        raise GenerationFailedError(
            f"no valid observation for tool {tool.name!r} after {self._max_attempts} "
            f"generations ({', '.join(reasons)})"
        )

    async def _generate(self, request: GenerationRequest) -> tuple[str, str]:
        started = time.perf_counter()
        try:
            async with self._slots, asyncio.timeout(self._timeout_s):
                generation = await self._backend.generate(request)
        except TimeoutError as exc:
            self._metrics.backend_errors.labels("timeout").inc()
            raise BackendUnavailableError(
                f"the LLM backend did not answer within {self._timeout_s:g} s"
            ) from exc
        except BackendUnavailableError:
            self._metrics.backend_errors.labels("unavailable").inc()
            raise
        self._metrics.generation_latency.observe(time.perf_counter() - started)
        return generation.text, generation.finish_reason

    def _check(self, tool: Tool, text: str, finish: str) -> tuple[bytes | None, str]:
        if finish == "length":
            return None, "length"
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            self._metrics.schema_violations.inc()
            return None, "invalid_json"
        if not tool.output_validator.is_valid(value):
            self._metrics.schema_violations.inc()
            return None, "schema"
        return orjson.dumps(value), ""
