"""The ToolActor and the ToolMaker over HTTP: the trainer is a client, never an insider.

Everything the trainer and the trace tools do with tools goes through the same public
contract an agent uses (``POST /v1/tool_calls``, ``POST /v1/episodes``, ``POST /v1/toolsets``),
so pointing a run at live tools, or at any server with the same contract, is configuration.

Failure policy (a live API's failures, as an agent meets them):

- a call refused with 400/404 (bad arguments, unknown tool) becomes an error observation for
  that call only; the other calls of the turn still run;
- connection errors, timeouts, 429 and 503 are retried ``retries`` times with backoff
  (``Retry-After`` honoured, capped), then every call of the turn gets an error observation
  with code ``tool_unavailable``; 502 (the simulator's own failure) is not retried.
``call_tools`` never raises for tool failures; callers that must fail hard look at ``code``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import httpx

from toolsim_trainer.grammar import ToolCallItem

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 503})
MAX_RETRY_AFTER_S = 30.0
_CALL_INDEX = re.compile(r"^tool_calls\[(\d+)\]")


class ServiceUnavailableError(RuntimeError):
    """A service did not answer; the message names the URL and how to start it."""


class ServiceError(RuntimeError):
    """A service answered with an error that is not a tool failure (a bad toolset, say)."""

    def __init__(self, message: str, *, status: int, code: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class ToolResult:
    """One call's observation as the policy will see it (an error is an observation too)."""

    tool_call_id: str
    content: str
    ok: bool
    code: str | None = None
    source: str | None = None
    latency_ms: float = 0.0
    flags: tuple[str, ...] = ()
    """Simulator flags from ``observations[]`` (``quality``, ``fidelity``): a flagged
    observation is the simulator's failure, kept out of rewards and SFT data."""


@dataclass
class CallStats:
    """Counters a run reports (per step in GRPO, per run in traces and eval)."""

    calls: int = 0
    failures: int = 0
    retries: int = 0
    cache_hits: int = 0
    wait_s: float = 0.0
    by_code: dict[str, int] = field(default_factory=dict)

    def count(self, result: ToolResult) -> None:
        self.calls += 1
        if result.source == "cache":
            self.cache_hits += 1
        if not result.ok:
            self.failures += 1
            code = result.code or "unknown"
            self.by_code[code] = self.by_code.get(code, 0) + 1


class _Service:
    """Shared transport: one ``httpx.AsyncClient``, explicit timeouts, bounded retries."""

    start_hint = ""

    def __init__(
        self,
        base_url: str,
        *,
        http: httpx.AsyncClient | None = None,
        timeout_s: float = 120.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_concurrency: int = 16,
        api_key: str | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            limits=httpx.Limits(max_connections=max_concurrency),
            headers=headers,
        )
        self.retries = retries
        self.backoff_s = backoff_s
        self._slots = asyncio.Semaphore(max_concurrency)
        self.stats = CallStats()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_http:
            await self.http.aclose()

    async def check(self) -> None:
        """Fail fast, with the URL and the command that starts the service."""
        url = f"{self.base_url}/health"
        try:
            response = await self.http.get(url, timeout=5.0)
        except httpx.HTTPError as exc:
            raise ServiceUnavailableError(
                f"{url} does not answer ({type(exc).__name__}); start it with "
                f"`{self.start_hint}` or fix the URL"
            ) from exc
        if response.status_code != 200:
            raise ServiceUnavailableError(f"{url} answered {response.status_code}")

    async def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """The response after retrying transient failures; raises ``ServiceUnavailableError``
        when retries run out."""
        url = f"{self.base_url}{path}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retries += 1
            try:
                async with self._slots:
                    response = await self.http.request(method, url, json=body)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                last = f"{type(exc).__name__}: {exc}"
                delay = self.backoff_s * 2**attempt
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                last = f"HTTP {response.status_code}"
                delay = _retry_after(response, self.backoff_s * 2**attempt)
            if attempt < self.retries:
                log.warning("%s %s failed (%s); retrying in %.1fs", method, url, last, delay)
                await asyncio.sleep(delay)
        raise ServiceUnavailableError(
            f"{method} {url} failed after {self.retries + 1} tries: {last}"
        )

    async def json(self, method: str, path: str, body: Any = None) -> Any:
        response = await self.request(method, path, body)
        if response.status_code >= 400:
            error = _error(response)
            raise ServiceError(
                f"{method} {path}: {response.status_code} {error.get('message', response.text)}",
                status=response.status_code,
                code=error.get("code"),
            )
        return response.json()

    async def metrics(self) -> dict[str, float]:
        """The Prometheus text of ``/metrics`` as {sample with labels: value}."""
        response = await self.request("GET", "/metrics")
        return parse_prometheus(response.text)


class ActorClient(_Service):
    """The ToolActor: episodes and tool calls."""

    start_hint = "toolsim serve toolactor"

    async def create_episode(
        self, toolset_id: str, *, seed: int | None = None, grounding: dict[str, Any] | None = None
    ) -> str:
        body: dict[str, Any] = {"toolset_id": toolset_id}
        if seed is not None:
            body["seed"] = seed
        if grounding is not None:
            body["grounding"] = grounding
        return str((await self.json("POST", "/v1/episodes", body))["episode_id"])

    async def get_toolset(self, toolset_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.json("GET", f"/v1/toolsets/{toolset_id}")
        return result

    async def register_toolset(self, body: dict[str, Any]) -> str:
        return str((await self.json("POST", "/v1/toolsets", body))["id"])

    async def call_tools(
        self,
        toolset_id: str,
        calls: Sequence[ToolCallItem],
        *,
        episode_id: str | None = None,
        seed: int | None = None,
    ) -> list[ToolResult]:
        """One result per call, in order. A refused call is an error result for that call
        alone; the others are sent again without it (arguments are validated before anything
        is generated, so a refusal costs no generation)."""
        results: dict[int, ToolResult] = {}
        pending = list(range(len(calls)))
        started = time.perf_counter()
        while pending:
            body: dict[str, Any] = {
                "toolset_id": toolset_id,
                "tool_calls": [_wire(calls[i], i) for i in pending],
            }
            if episode_id is not None:
                body["episode_id"] = episode_id
            if seed is not None:
                body["seed"] = seed
            try:
                response = await self.request("POST", "/v1/tool_calls", body)
            except ServiceUnavailableError as exc:
                for i in pending:
                    results[i] = _error_result(calls[i], i, "tool_unavailable", str(exc))
                break
            pending = self._settle(response, calls, pending, results)
        self.stats.wait_s += time.perf_counter() - started
        ordered = [results[i] for i in range(len(calls))]
        for result in ordered:
            self.stats.count(result)
        return ordered

    def _settle(
        self,
        response: httpx.Response,
        calls: Sequence[ToolCallItem],
        pending: list[int],
        results: dict[int, ToolResult],
    ) -> list[int]:
        """Record what ``response`` settles; return the calls still to send."""
        if response.status_code == 200:
            payload = response.json()
            infos = payload.get("observations", [])
            for k, (i, message) in enumerate(zip(pending, payload["messages"], strict=True)):
                info = infos[k] if k < len(infos) else {}
                flags = tuple(f for f in ("quality", "fidelity") if info.get(f))
                results[i] = ToolResult(
                    tool_call_id=_call_id(calls[i], i),
                    content=message["content"],
                    ok=True,
                    source=info.get("source"),
                    latency_ms=float(info.get("latency_ms", 0.0)),
                    flags=flags,
                )
            return []
        error = _error(response)
        code = str(error.get("code") or f"http_{response.status_code}")
        message = str(error.get("message") or response.text[:500])
        match = _CALL_INDEX.match(str(error.get("param") or ""))
        if response.status_code in (400, 404) and match and int(match[1]) < len(pending):
            bad = pending[int(match[1])]
            results[bad] = _error_result(calls[bad], bad, code, message)
            return [i for i in pending if i != bad]
        for i in pending:  # the whole request failed: every call gets the error
            results[i] = _error_result(calls[i], i, code, message)
        return []


class MakerClient(_Service):
    """The ToolMaker: a task becomes a validated toolset."""

    start_hint = "toolsim serve toolmaker"

    async def create_toolset(
        self, task: str, *, seed: int = 0, max_tools: int | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"task": task, "seed": seed}
        if max_tools is not None:
            body["max_tools"] = max_tools
        result: dict[str, Any] = await self.json("POST", "/v1/toolsets", body)
        return result


def _call_id(call: ToolCallItem, index: int) -> str:
    return call.id or f"call_{index}"


def _wire(call: ToolCallItem, index: int) -> dict[str, Any]:
    return {
        "id": _call_id(call, index),
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
    }


def _error_result(call: ToolCallItem, index: int, code: str, message: str) -> ToolResult:
    """An error as a live API would return it: a JSON body the policy can read."""
    content = json.dumps({"error": {"code": code, "message": message}}, ensure_ascii=False)
    return ToolResult(tool_call_id=_call_id(call, index), content=content, ok=False, code=code)


def _error(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        return {}
    error = payload.get("error") if isinstance(payload, dict) else None
    return error if isinstance(error, dict) else {}


def _retry_after(response: httpx.Response, default: float) -> float:
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(response.headers["retry-after"])))
    except (KeyError, ValueError):
        return default


def parse_prometheus(text: str) -> dict[str, float]:
    """{``name{label="value",...}``: value} for every sample (prometheus_client's parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples
