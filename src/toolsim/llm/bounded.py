"""A backend with a deadline and a cap: what both services put between their logic and the LLM.

``BoundedBackend`` wraps any ``LLMBackend``: at most ``max_concurrent`` generations are in
flight (more wait their turn, so the engine batches what is in flight instead of queueing
without end), and each one that starts must answer within ``timeout_s`` or fail with
``BackendTimeoutError`` (503 with ``Retry-After``), so a stalled engine never hangs a request.
The wait for a slot is not part of the deadline: a burst queues, it does not fail.
"""

from __future__ import annotations

import asyncio

from toolsim.errors import BackendTimeoutError
from toolsim.llm.base import DelegatingBackend, Generation, GenerationRequest, LLMBackend


class BoundedBackend(DelegatingBackend):
    def __init__(self, backend: LLMBackend, *, timeout_s: float, max_concurrent: int) -> None:
        if timeout_s <= 0 or max_concurrent < 1:
            raise ValueError("timeout_s must be positive and max_concurrent at least 1")
        super().__init__(backend)
        self.timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_concurrent)

    async def generate(self, request: GenerationRequest) -> Generation:
        async with self._slots:
            try:
                async with asyncio.timeout(self.timeout_s):
                    return await self.inner.generate(request)
            except TimeoutError as exc:
                raise BackendTimeoutError(
                    f"the LLM backend did not answer within {self.timeout_s:g} s"
                ) from exc
