"""Miss path, coalescing and batching: the ToolActor vs the same generations sent straight to
the backend, measured in one run.

    .venv/bin/python bench/miss_path.py --backend embedded
    .venv/bin/python bench/miss_path.py --backend vllm [--vllm-url URL]   # starts vLLM if no URL

1. latency at concurrency 1 (median of N distinct calls) and throughput at 16 concurrent
   distinct calls, through the ToolActor over HTTP and straight to the backend. Targets: at most
   1.10x the latency, at least 0.9x the throughput.
2. coalescing: 32 identical concurrent calls -> backend generations (target 1).
3. batching: backend throughput at 16 concurrent calls over at 1 (target >= 5x, embedded).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PYTHON, ROOT, free_port, server
from toolsim.config import CommonSettings
from toolsim.llm.base import GenerationRequest, LLMBackend
from toolsim.llm.factory import build_backend
from toolsim.toolsets import build_toolset
from toolsim_toolactor.prompt import build_messages

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
OUTPUT = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "temperature_c": {"type": "integer"},
        "conditions": {"type": "string", "enum": ["sunny", "cloudy", "rain", "snow", "fog"]},
    },
    "required": ["city", "temperature_c", "conditions"],
    "additionalProperties": False,
}
CITIES = [
    "Paris",
    "Oslo",
    "Lima",
    "Cairo",
    "Tokyo",
    "Quito",
    "Dakar",
    "Perth",
    "Hanoi",
    "Minsk",
    "Accra",
    "Doha",
    "Baku",
    "Riga",
    "Sofia",
    "Porto",
    "Turin",
    "Fez",
    "Nice",
    "Kyiv",
    "Bonn",
    "Graz",
    "Cork",
    "Bern",
    "Pisa",
    "Lyon",
    "Gent",
    "Split",
    "Malmo",
    "Bath",
    "York",
    "Ulm",
    "Kiel",
    "Linz",
    "Metz",
    "Gdansk",
    "Lodz",
    "Brno",
    "Cluj",
    "Varna",
    "Aarhus",
    "Tartu",
    "Kaunas",
    "Split2",
    "Zadar",
    "Nantes",
    "Lille",
]
TEMPERATURE = 0.7
MAX_TOKENS = 64
SEED = 0


def requests_for(cities: list[str]) -> list[GenerationRequest]:
    tool = build_toolset([TOOL], {"get_weather": OUTPUT}).tools["get_weather"]
    return [
        GenerationRequest(
            build_messages(tool, {"city": c}, None), OUTPUT, SEED, TEMPERATURE, MAX_TOKENS
        )
        for c in cities
    ]


def body(city: str, seed: int = SEED) -> dict[str, Any]:
    return {
        "tools": [TOOL],
        "output_schemas": {"get_weather": OUTPUT},
        "seed": seed,
        "tool_calls": [
            {
                "id": "c",
                "type": "function",
                "function": {"name": "get_weather", "arguments": f'{{"city": "{city}"}}'},
            }
        ],
    }


async def latency_and_throughput(
    one: Callable[[int], Awaitable[Any]], n_serial: int, n_parallel: int, label: str
) -> tuple[float, float]:
    """Median latency of ``n_serial`` sequential calls and calls/s of ``n_parallel`` at once."""
    latencies = []
    for i in tqdm(range(n_serial), desc=f"{label} c=1", leave=False):
        started = time.perf_counter()
        await one(i)
        latencies.append(time.perf_counter() - started)
    # two rounds of n_parallel distinct calls: the first big batch of a process runs colder
    started = time.perf_counter()
    for base in (n_serial, n_serial + n_parallel):
        await asyncio.gather(*(one(base + i) for i in range(n_parallel)))
    throughput = 2 * n_parallel / (time.perf_counter() - started)
    return statistics.median(latencies), throughput


async def direct(backend: LLMBackend, n_serial: int, n_parallel: int) -> tuple[float, float]:
    reqs = requests_for(CITIES)

    async def one(i: int) -> None:
        generation = await backend.generate(reqs[i])
        assert generation.text

    await one(len(CITIES) - 1)  # warm-up (grammar compile, allocator)
    return await latency_and_throughput(one, n_serial, n_parallel, "direct")


async def through_actor(url: str, n_serial: int, n_parallel: int) -> tuple[float, float]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def one(i: int, seed: int = SEED) -> None:
            r = await client.post("/v1/tool_calls", json=body(CITIES[i], seed))
            r.raise_for_status()
            assert r.json()["observations"][0]["source"] == "simulated"

        await one(len(CITIES) - 1, seed=SEED + 1)  # warm-up, another key
        return await latency_and_throughput(one, n_serial, n_parallel, "actor")


async def coalescing(url: str) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        before = generations(await client.get("/metrics"))
        rs = await asyncio.gather(
            *(client.post("/v1/tool_calls", json=body("Zurich", 99)) for _ in range(32))
        )
        assert {r.status_code for r in rs} == {200}
        assert len({r.json()["messages"][0]["content"] for r in rs}) == 1
        return generations(await client.get("/metrics")) - before


def generations(metrics: httpx.Response) -> int:
    m = re.search(r"^toolsim_generation_latency_seconds_count ([\d.e+]+)$", metrics.text, re.M)
    return int(float(m.group(1))) if m else 0


async def batching(backend: LLMBackend) -> float:
    reqs = requests_for(CITIES)
    started = time.perf_counter()
    for r in reqs[:4]:
        await backend.generate(r)
    one_at_a_time = 4 / (time.perf_counter() - started)
    started = time.perf_counter()
    await asyncio.gather(*(backend.generate(r) for r in reqs[4:20]))
    sixteen = 16 / (time.perf_counter() - started)
    return sixteen / one_at_a_time


def make_backend(kind: str, vllm_url: str | None) -> LLMBackend:
    """The backend exactly as the ToolActor builds it from the same settings."""
    overrides = {"backend": kind, "llm_timeout_s": 600}
    if vllm_url:
        overrides["vllm_url"] = vllm_url
    return build_backend(CommonSettings(**overrides))


async def direct_only(args: argparse.Namespace) -> None:
    """The backend's side, in a process of its own: prints one JSON line."""
    backend = make_backend(args.backend, args.vllm_url)
    await backend.start()
    d_lat, d_tput = await direct(backend, args.serial, 16)
    batch_ratio = await batching(backend) if args.backend == "embedded" else None
    await backend.aclose()
    print(json.dumps({"latency": d_lat, "throughput": d_tput, "batching": batch_ratio}))


def run_direct(args: argparse.Namespace, vllm_url: str | None) -> dict[str, Any]:
    """Each side runs in a fresh process, so neither inherits the other's threads or heap."""
    cmd = [PYTHON, __file__, "--backend", args.backend, "--serial", str(args.serial), "--direct"]
    if vllm_url:
        cmd += ["--vllm-url", vllm_url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


async def main_async(args: argparse.Namespace, vllm_url: str | None) -> None:
    n_serial, n_parallel = args.serial, 16
    measured = run_direct(args, vllm_url)
    d_lat, d_tput, batch_ratio = measured["latency"], measured["throughput"], measured["batching"]

    env = {
        "TOOLSIM_BACKEND": args.backend,
        "TOOLSIM_TEMPERATURE": str(TEMPERATURE),
        "TOOLSIM_MAX_TOKENS": str(MAX_TOKENS),
        "TOOLSIM_LOG_LEVEL": "warning",
    }
    if vllm_url:
        env["TOOLSIM_VLLM_URL"] = vllm_url
    port = free_port()
    cmd = [PYTHON, "-m", "toolsim", "serve", "toolactor", "--port", str(port)]
    with server(cmd, port, env=env, ready_path="/ready") as url:
        a_lat, a_tput = await through_actor(url, n_serial, n_parallel)
        coalesced = await coalescing(url)
        retries = re.findall(
            r"^toolsim_generation_retries_total\{.*\} ([\d.]+)$",
            (await httpx.AsyncClient().get(url + "/metrics")).text,
            re.M,
        )

    print(f"backend: {args.backend}")
    print(f"{'':<22}{'latency c=1 (s)':>16}{'calls/s c=16':>14}")
    print(f"{'straight to backend':<22}{d_lat:>16.3f}{d_tput:>14.2f}")
    print(f"{'through ToolActor':<22}{a_lat:>16.3f}{a_tput:>14.2f}")
    print(f"generation retries inside the ToolActor: {sum(float(r) for r in retries):.0f}")
    print(f"coalescing: 32 identical concurrent calls -> {coalesced} backend generation(s)")
    if batch_ratio is not None:
        print(f"embedded batching: throughput at 16 concurrent / at 1 = {batch_ratio:.2f}x")
    print(
        f"HEADLINE miss path ({args.backend}): latency {a_lat / d_lat:.3f}x (target <= 1.10), "
        f"throughput {a_tput / d_tput:.3f}x (target >= 0.90), coalescing {coalesced} gen/32 calls"
        + (f", batching {batch_ratio:.1f}x" if batch_ratio is not None else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["embedded", "vllm"], default="embedded")
    parser.add_argument("--vllm-url", help="use this server instead of starting one")
    parser.add_argument("--serial", type=int, default=8, help="sequential calls for latency")
    parser.add_argument("--direct", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.direct:
        asyncio.run(direct_only(args))
        return
    if args.backend == "vllm" and not args.vllm_url:
        port = free_port()
        cmd = ["bash", str(ROOT / "scripts" / "serve-vllm.sh"), str(port)]
        with server(cmd, port, timeout_s=600) as url:
            asyncio.run(main_async(args, url + "/v1"))
    else:
        asyncio.run(main_async(args, args.vllm_url))


if __name__ == "__main__":
    main()
