"""What access control costs the cache-hit path, measured in process (no sockets, no wrk).

The served stack (``toolsim serve``'s outer fast path around the app) answers the same cached
``POST /v1/tool_calls`` again and again, driven directly through ASGI so that the figure is
the server's own work per request, not the network's or the load generator's. Three set-ups,
interleaved over several rounds (the median of each is reported):

- ``open``: ``TOOLSIM_API_KEYS`` unset, the default (no middleware, no check);
- ``keys``: two API keys, a bearer token on every request;
- ``keys+rate``: the same with a per-key token bucket in process.

    .venv/bin/python bench/access_overhead.py [--requests 20000] [--rounds 5]

The last line is the headline: microseconds per request of each set-up and the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from toolsim.llm.base import Generation, GenerationRequest, LLMBackend
from toolsim_toolactor import ActorSettings, create_app

BODY = json.dumps(
    {
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ],
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
).encode()
KEY = "sk-bench-0123456789abcdef"


class FixedBackend(LLMBackend):
    """Answers every generation with the same observation: only the first call reaches it."""

    model_name = "fixed"

    async def generate(self, request: GenerationRequest) -> Generation:
        return Generation('{"result": "18 C and sunny"}', "stop", 10, 10)

    async def ready(self) -> bool:
        return True


async def drive(served: Any, headers: list[tuple[bytes, bytes]], n: int) -> float:
    """Seconds per request over ``n`` cache hits."""
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/tool_calls",
        "headers": [(b"content-type", b"application/json"), *headers],
    }
    message = {"type": "http.request", "body": BODY, "more_body": False}
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return message

    async def send(event: dict[str, Any]) -> None:
        if event["type"] == "http.response.start":
            statuses.append(event["status"])

    started = time.perf_counter()
    for _ in range(n):
        await served(dict(scope), receive, send)
    elapsed = time.perf_counter() - started
    assert set(statuses) == {200}, set(statuses)
    return elapsed / n


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    bearer = [(b"authorization", f"Bearer {KEY}".encode())]
    setups = {
        "open": (ActorSettings(), []),
        "keys": (ActorSettings(api_keys=f"sk-other-key,{KEY}"), bearer),
        "keys+rate": (
            ActorSettings(api_keys=KEY, rate_limit_rps=1e9, rate_limit_burst=10**9),
            bearer,
        ),
    }
    apps = {
        name: create_app(settings, backend=FixedBackend()) for name, (settings, _) in setups.items()
    }
    times: dict[str, list[float]] = {name: [] for name in setups}
    lives = [app.router.lifespan_context(app) for app in apps.values()]
    for life in lives:
        await life.__aenter__()
    try:
        served = apps  # as `toolsim serve` serves them: the fast path is in the app
        for name, endpoint in served.items():
            await drive(endpoint, setups[name][1], 200)  # the miss, then warm hits
        for _ in range(args.rounds):
            for name, endpoint in served.items():
                times[name].append(await drive(endpoint, setups[name][1], args.requests))
    finally:
        for life in lives:
            await life.__aexit__(None, None, None)
    us = {name: statistics.median(t) * 1e6 for name, t in times.items()}
    for name, value in us.items():
        print(f"{name:<10} {value:7.2f} us/request   ({1e6 / value:8.0f} req/s in one core)")
    print(
        f"HEADLINE access control on the cache-hit path: open {us['open']:.2f} us, "
        f"keys +{us['keys'] - us['open']:.2f} us, keys+rate +{us['keys+rate'] - us['open']:.2f} us "
        "per request"
    )


if __name__ == "__main__":
    asyncio.run(main())
