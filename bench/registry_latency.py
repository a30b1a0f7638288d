"""Registry read latency: ``get_toolset`` from Redis vs in memory, and the ToolActor's own
resolution (``ToolActorService.get_toolset``, which keeps compiled toolsets in process).

The bench starts a real ``redis-server`` on a free port (no persistence) and stops it by its
handle at the end. The record is a realistic generated toolset: five strict tools with output
schemas. Reads are sequential, each timed on its own.

    .venv/bin/python bench/registry_latency.py [--reads 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port
from toolsim.llm.base import Generation, GenerationRequest, LLMBackend
from toolsim.registry import MemoryRegistry, RedisRegistry, Registry
from toolsim.toolsets import build_toolset
from toolsim_toolactor import ActorSettings
from toolsim_toolactor import create_app as create_actor


def field(kind: str, text: str) -> dict[str, Any]:
    return {"type": kind, "description": text}


def toolset_record() -> dict[str, Any]:
    """Five strict tools, two or three parameters and three or four returns each."""
    tools, outputs = [], {}
    for i, topic in enumerate(("film", "person", "city", "company", "book")):
        params = {
            "name": field("string", f"Name of the {topic}"),
            "year": field(["integer", "null"], "Year to look at"),
        }
        if i % 2:
            params["language"] = field(["string", "null"], "Language of the answer")
        name = f"lookup_{topic}_facts"
        tools.append(
            {
                "type": "function",
                "function": {
                    "name": name,
                    "description": f"Look up facts about a {topic} in an encyclopedia.",
                    "parameters": {
                        "type": "object",
                        "properties": params,
                        "required": list(params),
                        "additionalProperties": False,
                    },
                    "strict": True,
                },
            }
        )
        returns = {
            "title": {**field("string", "Canonical title"), "maxLength": 400},
            "summary": {**field("string", "One-paragraph summary"), "maxLength": 400},
            "founded": field("integer", "Year it started"),
        }
        if i % 2 == 0:
            returns["score"] = field("number", "Relevance score")
        outputs[name] = {
            "type": "object",
            "properties": returns,
            "required": list(returns),
            "additionalProperties": False,
        }
    return build_toolset(tools, outputs, {n: False for n in outputs}).to_record()


@contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: apt-get install redis-server")
    port = free_port()
    workdir = tempfile.TemporaryDirectory()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir.name]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        workdir.cleanup()


class NoBackend(LLMBackend):
    """The ToolActor needs a backend to start; resolving toolsets never calls it."""

    model_name = "none"

    async def generate(self, request: GenerationRequest) -> Generation:
        raise AssertionError("the registry bench never generates")

    async def ready(self) -> bool:
        return True


async def timed(label: str, read: Callable[[], Awaitable[object]], reads: int) -> list[float]:
    """Microseconds per read, after a short warm-up."""
    for _ in range(min(200, reads)):
        await read()
    samples = []
    for _ in tqdm(range(reads), desc=label, unit="read", leave=False):
        started = time.perf_counter_ns()
        await read()
        samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


async def registry_reads(registry: Registry, label: str, reads: int) -> list[float]:
    record = toolset_record()
    await registry.put_toolset(record)
    assert await registry.get_toolset(record["id"]) == record
    return await timed(label, lambda: registry.get_toolset(record["id"]), reads)


async def actor_reads(registry: Registry, reads: int) -> list[float]:
    record = toolset_record()
    await registry.put_toolset(record)
    app = create_actor(ActorSettings(), backend=NoBackend(), registry=registry)
    async with app.router.lifespan_context(app):
        service = app.state.actor.service
        return await timed("actor", lambda: service.get_toolset(record["id"]), reads)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(url: str, reads: int) -> dict[str, list[float]]:
    client = aioredis.Redis.from_url(url)
    try:
        results = {
            "redis": await registry_reads(RedisRegistry(client), "redis", reads),
            "memory": await registry_reads(MemoryRegistry(), "memory", reads),
            "actor (over redis)": await actor_reads(RedisRegistry(client, prefix="a:"), reads),
        }
    finally:
        await client.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=5000, help="reads per registry")
    args = parser.parse_args()
    with redis_server() as url:
        results = asyncio.run(measure(url, args.reads))

    size = len(str(toolset_record()))
    print(f"\nget_toolset of a 5-tool record (~{size} chars), {args.reads} sequential reads each")
    print(f"  {'registry':<20}{'p50 us':>10}{'p99 us':>10}{'p50 vs memory':>16}")
    memory_p50 = percentile(results["memory"], 0.5)
    for name, samples in results.items():
        p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
        print(f"  {name:<20}{p50:>10.1f}{p99:>10.1f}{p50 / memory_p50:>15.3f}x")
    redis_p50 = percentile(results["redis"], 0.5)
    print(
        f"HEADLINE registry read p50: redis {redis_p50:.0f} us, memory {memory_p50:.0f} us "
        f"({redis_p50 / memory_p50:.1f}x)"
    )


if __name__ == "__main__":
    main()
