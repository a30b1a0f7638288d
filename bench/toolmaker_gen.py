"""Toolset generation on real questions: how often the first generation is valid, and how long
a toolset takes.

The ToolMaker app runs in process (httpx ASGITransport) on the embedded backend, or on a vLLM
server with ``--backend vllm --vllm-url URL``. Tasks are HotpotQA and MuSiQue questions from
``../shared/data/context/``, alternating, each with its own seed, so nothing is cached. A thin
wrapper around the backend counts the interface generations each task needed (classification
is not counted): one means the first try was valid.

    .venv/bin/python bench/toolmaker_gen.py [--tasks 50] [--concurrency 1] [--max-tools 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
from tqdm import tqdm

from toolsim.llm.base import DelegatingBackend, Generation, GenerationRequest, LLMBackend
from toolsim.llm.factory import build_backend
from toolsim.registry import MemoryRegistry
from toolsim_toolmaker import MakerSettings, create_app
from toolsim_toolmaker.taxonomy import TASK_CLASSES

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "context"
SOURCES = ("hotpotqa_train.json", "musique_train.json")


class CountingBackend(DelegatingBackend):
    """Passes every request through; counts schema-constrained generations per user prompt."""

    def __init__(self, inner: LLMBackend) -> None:
        super().__init__(inner)
        self.interface_calls: Counter[str] = Counter()

    async def generate(self, request: GenerationRequest) -> Generation:
        if request.json_schema is not None:
            self.interface_calls[request.messages[-1]["content"]] += 1
        return await self.inner.generate(request)

    def attempts_for(self, task: str) -> int:
        # The interface prompt's user message is "Task (<class>): <task>".
        return sum(n for prompt, n in self.interface_calls.items() if prompt.endswith(task))


@dataclass(frozen=True)
class Outcome:
    task: str
    status: int
    seconds: float
    attempts: int
    task_class: str | None


def load_tasks(n: int) -> list[str]:
    """Alternate questions from each source, without repeats, until there are ``n``."""
    pools = [[r["question"].strip() for r in json.loads((DATA / s).read_text())] for s in SOURCES]
    tasks: list[str] = []
    for row in zip(*pools, strict=False):
        tasks += [q for q in row if q not in tasks]
    if len(tasks) < n:
        raise SystemExit(f"only {len(tasks)} distinct questions in {DATA}, asked for {n}")
    return tasks[:n]


async def run_one(
    client: httpx.AsyncClient, backend: CountingBackend, task: str, seed: int, max_tools: int
) -> Outcome:
    started = time.perf_counter()
    r = await client.post("/v1/toolsets", json={"task": task, "max_tools": max_tools, "seed": seed})
    seconds = time.perf_counter() - started
    task_class = r.json().get("task_class") if r.status_code == 201 else None
    return Outcome(task, r.status_code, seconds, backend.attempts_for(task), task_class)


async def run_all(args: argparse.Namespace) -> tuple[list[Outcome], float, str]:
    extra = {"vllm_url": args.vllm_url} if args.vllm_url else {}
    settings = MakerSettings(backend=args.backend, **extra)
    backend = CountingBackend(build_backend(settings))
    app = create_app(settings, backend=backend, registry=MemoryRegistry())
    tasks = load_tasks(args.tasks)
    gate = asyncio.Semaphore(args.concurrency)
    async with app.router.lifespan_context(app):
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://maker", timeout=3600
        )
        progress = tqdm(total=len(tasks), desc="toolsets", unit="toolset")

        async def one(i: int, task: str) -> Outcome:
            async with gate:
                outcome = await run_one(client, backend, task, i, args.max_tools)
            progress.update()
            return outcome

        started = time.perf_counter()
        outcomes = await asyncio.gather(*(one(i, t) for i, t in enumerate(tasks)))
        wall = time.perf_counter() - started
        progress.close()
        metrics = (await client.get("/metrics")).text
        await client.aclose()
    return list(outcomes), wall, metrics


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(outcomes: list[Outcome], wall: float, metrics: str, args: argparse.Namespace) -> None:
    n = len(outcomes)
    ok = [o for o in outcomes if o.status == 201]
    failed = [o for o in outcomes if o.status == 502]
    other = [o for o in outcomes if o.status not in (201, 502)]
    first_try = sum(1 for o in ok if o.attempts == 1)
    retries = statistics.fmean(o.attempts - 1 for o in outcomes)
    seconds = [o.seconds for o in ok] or [float("nan")]
    p50, p90 = percentile(seconds, 0.5), percentile(seconds, 0.9)
    reasons = dict(
        re.findall(r'toolmaker_invalid_generations_total\{reason="(\w+)"\} (\S+)', metrics)
    )

    print(
        f"\nbackend {args.backend}, {n} tasks, max_tools {args.max_tools}, "
        f"concurrency {args.concurrency}"
    )
    rows = [
        ("first-try valid", f"{first_try}/{n} = {100 * first_try / n:.0f}%"),
        ("valid within retries (201)", f"{len(ok)}/{n}"),
        ("failed after retries (502)", f"{len(failed)}"),
        ("other statuses", ", ".join(str(o.status) for o in other) or "none"),
        ("mean retries per task", f"{retries:.2f}"),
        ("interface generations", f"{sum(o.attempts for o in outcomes)}"),
        (
            "refused generations",
            ", ".join(f"{k} {float(v):.0f}" for k, v in reasons.items()) or "none",
        ),
        ("latency p50 / p90 (s)", f"{p50:.1f} / {p90:.1f}"),
        ("wall time (s)", f"{wall:.0f} ({60 * len(ok) / wall:.2f} toolsets/min)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    classes = Counter(o.task_class for o in ok)
    print("\n  task class        toolsets")
    for name in TASK_CLASSES:
        print(f"  {name:<16}  {classes.get(name, 0):>8}")
    print(
        f"HEADLINE toolset generation: first-try valid {100 * first_try / n:.0f}% (n={n}), "
        f"mean retries {retries:.2f}, p50 {p50:.1f} s per toolset"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=50, help="questions to turn into toolsets")
    parser.add_argument("--backend", choices=["embedded", "vllm"], default="embedded")
    parser.add_argument("--vllm-url", default=None, help="OpenAI-compatible base URL ending in /v1")
    parser.add_argument("--max-tools", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight at once")
    args = parser.parse_args()
    if args.backend == "vllm" and not args.vllm_url:
        parser.error("--backend vllm needs --vllm-url")
    outcomes, wall, metrics = asyncio.run(run_all(args))
    report(outcomes, wall, metrics, args)


if __name__ == "__main__":
    main()
