"""OpenAI-compatible server backend (vLLM in production) over one shared HTTP client."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from toolsim.errors import BackendUnavailableError, GenerationFailedError, InvalidRequestError
from toolsim.llm.base import FinishReason, Generation, GenerationRequest, LLMBackend

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({502, 503})


class VLLMBackend(LLMBackend):
    """Chat completions against ``base_url`` (``.../v1``) with the schema as ``response_format``.

    Retries, with exponential backoff, only what a retry can fix: connection errors and
    502/503. A timeout is not retried (the engine is busy; retrying adds load) and becomes
    ``BackendUnavailableError`` at once.
    """

    def __init__(
        self,
        base_url: str,
        model_name: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        connect_retries: int = 2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.model_name = model_name
        self._retries = connect_retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            transport=transport,
        )

    async def generate(self, request: GenerationRequest) -> Generation:
        if request.prompt_ids is not None:  # chat completions take messages, not token ids
            raise InvalidRequestError("prompt_ids needs the embedded backend", param="prompt_ids")
        response = await self._post_with_retries(_payload(self.model_name, request))
        body = response.json()
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        finish: FinishReason = "length" if choice.get("finish_reason") == "length" else "stop"
        return Generation(
            text=choice["message"].get("content") or "",
            finish_reason=finish,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
        )

    async def ready(self) -> bool:
        try:
            response = await self._client.get("/models", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post_with_retries(self, payload: dict[str, Any]) -> httpx.Response:
        for attempt in range(self._retries + 1):
            last = attempt == self._retries
            try:
                response = await self._client.post("/chat/completions", json=payload)
            except httpx.TimeoutException as exc:
                raise BackendUnavailableError(f"LLM server timed out: {exc!r}") from exc
            except httpx.TransportError as exc:
                if last:
                    raise BackendUnavailableError(f"LLM server unreachable: {exc!r}") from exc
            else:
                if response.status_code == 200:
                    return response
                if response.status_code not in RETRY_STATUSES or last:
                    raise _status_error(response)
            await asyncio.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover


def _payload(model: str, request: GenerationRequest) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": model,
        "messages": request.messages,
        "seed": request.seed,
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
    }
    if request.presence_penalty:
        payload["presence_penalty"] = request.presence_penalty
    if request.json_schema is not None:
        payload["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "observation", "schema": request.json_schema},
        }
    elif request.choices is not None:
        payload["structured_outputs"] = {"choice": request.choices}
    return payload


def _status_error(response: httpx.Response) -> Exception:
    detail = response.text[:300]
    if response.status_code >= 500:
        return BackendUnavailableError(f"LLM server error {response.status_code}: {detail}")
    return GenerationFailedError(
        f"LLM server refused the request ({response.status_code}): {detail}"
    )
