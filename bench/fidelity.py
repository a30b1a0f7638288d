"""Simulation fidelity: do grounded simulated observations carry the facts, and how fast?

For HotpotQA and MuSiQue training questions (``../shared/data/context/*_train.json``, each
grounded with its question, gold answer and aliases, and supporting paragraphs) it calls
``search(query=question)`` through the ToolActor (output ``{"results": [{"title", "text"}]}``,
at most 5) and measures:

- answer recall (a gold answer in the observation, normalised as in EM) of the simulated
  tool at usefulness 1.0 vs the same toolset with ``search`` live (BM25 over the questions'
  corpus); yes/no questions are left out of recall (no passage states "yes");
- the measured useful share (evidence calls whose observation carries the answer) at
  usefulness 0.25, 0.5 and 0.75 (same episode seeds: a call useful at one level is useful at
  every higher one, and is then replayed from the cache);
- seconds per simulated call (p50/p90, cache misses at usefulness 1.0), prompt and generated
  tokens per generation, attempts per observation and fidelity flags.

    python bench/fidelity.py [--questions 50] [--threads 1] [--backend embedded|vllm]

Run it on an otherwise idle machine: every figure is per call, one call at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from toolsim.answers import answer_in_text, is_yes_no
from toolsim.config import CommonSettings
from toolsim.tools import utility_definitions
from toolsim_toolactor import ActorSettings, create_app

ROOT = Path(__file__).resolve().parent.parent
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search Wikipedia.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
}
OUTPUT = {
    "type": "object",
    "properties": {
        "results": {
            "type": "array",
            "maxItems": 5,
            "items": {
                "type": "object",
                "properties": {"title": {"type": "string"}, "text": {"type": "string"}},
                "required": ["title", "text"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["results"],
    "additionalProperties": False,
}
SEED = 1
LEVELS = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class Question:
    dataset: str
    question: str
    golds: tuple[str, ...]
    passages: tuple[dict[str, str], ...]

    @property
    def checkable(self) -> bool:
        return not is_yes_no(self.golds)

    def grounding(self, usefulness: float) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.golds[0],
            "aliases": list(self.golds[1:]),
            "passages": list(self.passages),
            "usefulness": usefulness,
        }


def load_questions(data: Path, dataset: str, limit: int) -> list[Question]:
    rows = json.loads((data / "context" / f"{dataset}_train.json").read_text())[:limit]
    out = []
    for row in rows:
        golds = tuple(dict.fromkeys([row["answer"], *row.get("answer_aliases", [])]))
        if "supporting_facts" in row:  # HotpotQA
            titles = {fact[0] for fact in row["supporting_facts"]}
            passages = tuple(
                {"title": title, "text": "".join(sentences).strip()}
                for title, sentences in row["context"]
                if title in titles
            )
        else:  # MuSiQue
            passages = tuple(
                {"title": p["title"], "text": p["paragraph_text"]}
                for p in row["paragraphs"]
                if p["is_supporting"]
            )
        out.append(Question(dataset, row["question"], golds, passages))
    return out


def observation_text(content: str) -> str:
    try:
        value = json.loads(content)
    except ValueError:
        return content
    results = value.get("results", []) if isinstance(value, dict) else []
    return " \n ".join(f"{r.get('title', '')} {r.get('text', '')}" for r in results)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def metric(text: str, name: str) -> float:
    """Sum of a Prometheus sample family (all label sets)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass
class Call:
    question: Question
    usefulness: float
    content: str
    info: dict[str, Any]
    seconds: float

    @property
    def hit(self) -> bool:
        return answer_in_text(self.question.golds, observation_text(self.content))


class Bench:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.http = client

    async def toolset(self, **extra: Any) -> str:
        r = await self.http.post("/v1/toolsets", json={"tools": [SEARCH], **extra})
        r.raise_for_status()
        return str(r.json()["id"])

    async def call(
        self, toolset: str, q: Question, usefulness: float | None, seed: int = SEED
    ) -> Call:
        body: dict[str, Any] = {
            "toolset_id": toolset,
            "tool_calls": [
                {
                    "id": "c",
                    "type": "function",
                    "function": {"name": "search", "arguments": json.dumps({"query": q.question})},
                }
            ],
        }
        if usefulness is not None:
            episode = await self.http.post(
                "/v1/episodes",
                json={"toolset_id": toolset, "seed": seed, "grounding": q.grounding(usefulness)},
            )
            episode.raise_for_status()
            body["episode_id"] = episode.json()["episode_id"]
        started = time.perf_counter()
        r = await self.http.post("/v1/tool_calls", json=body)
        seconds = time.perf_counter() - started
        if r.status_code != 200:
            return Call(q, usefulness or 0.0, r.text, {"source": "error"}, seconds)
        payload = r.json()
        return Call(
            q,
            usefulness or 0.0,
            payload["messages"][0]["content"],
            payload["observations"][0],
            seconds,
        )

    async def metrics(self) -> str:
        return (await self.http.get("/metrics")).text


def recall(calls: list[Call]) -> tuple[int, int]:
    scored = [c for c in calls if c.question.checkable]
    return sum(c.hit for c in scored), len(scored)


async def run(args: argparse.Namespace) -> None:
    questions = [
        q for name in args.datasets for q in load_questions(args.data, name, args.questions)
    ]
    corpora = [args.data / "context" / f"{name}_train_corpus.json" for name in args.datasets]
    settings = ActorSettings(
        backend=args.backend,
        vllm_url=args.vllm_url,
        embedded_threads=args.threads,
        search_corpus=corpora,
        live_tools=["search"],
        llm_timeout_s=600,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://actor", timeout=900
        )
        bench = Bench(client)
        live_ts = await bench.toolset(
            output_schemas={"search": utility_definitions(["search"])["search"][1]},
            modes={"search": "live"},
        )
        simulated_ts = await bench.toolset(output_schemas={"search": OUTPUT})
        live = [await bench.call(live_ts, q, None) for q in questions]
        before = await bench.metrics()
        simulated = []
        for i, q in enumerate(questions):
            call = await bench.call(simulated_ts, q, 1.0)
            simulated.append(call)
            if args.verbose:
                print(
                    f"[{i + 1}/{len(questions)}] {call.seconds:.2f}s hit={call.hit} "
                    f"{call.info} {call.content[:120]}",
                    flush=True,
                )
        after = await bench.metrics()
        levels = {u: [await bench.call(simulated_ts, q, u) for q in questions] for u in LEVELS}
        group = questions[: args.group]
        started = time.perf_counter()  # a rollout group: concurrent misses, batched
        await asyncio.gather(*(bench.call(simulated_ts, q, 1.0, SEED + 1) for q in group))
        group_s = time.perf_counter() - started
        await client.aclose()
    report(args, questions, live, simulated, levels, before, after, (len(group), group_s))


def report(
    args: argparse.Namespace,
    questions: list[Question],
    live: list[Call],
    simulated: list[Call],
    levels: dict[float, list[Call]],
    before: str,
    after: str,
    group: tuple[int, float],
) -> None:
    model = CommonSettings().resolved_model_dir.name if args.backend == "embedded" else "vllm"
    print(f"backend={args.backend} model={model} threads={args.threads} questions={len(questions)}")
    print(f"{'dataset':10s} {'live BM25':>12s} {'simulated':>12s} {'flagged':>8s}")
    for name in [*args.datasets, "all"]:
        pick = (lambda c: True) if name == "all" else (lambda c, n=name: c.question.dataset == n)
        lh, ln = recall([c for c in live if pick(c)])
        sh, sn = recall([c for c in simulated if pick(c)])
        flagged = sum(1 for c in simulated if pick(c) and c.info.get("fidelity"))
        print(
            f"{name:10s} {lh:5d}/{ln:<4d}{lh / max(ln, 1):4.0%} {sh:5d}/{sn:<4d}"
            f"{sh / max(sn, 1):4.0%} {flagged:8d}"
        )
    errors = sum(1 for c in simulated if c.info.get("source") == "error")
    misses = [c.seconds for c in simulated if c.info.get("source") == "simulated"]
    generations = metric(after, "toolsim_generation_latency_seconds_count") - metric(
        before, "toolsim_generation_latency_seconds_count"
    )
    completion = metric(after, "toolsim_completion_tokens_total") - metric(
        before, "toolsim_completion_tokens_total"
    )
    prompt = metric(after, "toolsim_prompt_tokens_total") - metric(
        before, "toolsim_prompt_tokens_total"
    )
    print(
        f"simulated calls: {len(misses)} generated, {errors} errors; "
        f"{generations / max(len(misses), 1):.2f} generations per observation; "
        f"{prompt / max(generations, 1):.0f} prompt and {completion / max(generations, 1):.0f} "
        f"generated tokens per generation"
    )
    live_s = [c.seconds for c in live]
    p50, p90 = percentile(misses, 0.5), percentile(misses, 0.9)
    print(
        f"seconds per search call: simulated p50 {p50:.2f} p90 {p90:.2f}; "
        f"live p50 {percentile(live_s, 0.5):.4f} p90 {percentile(live_s, 0.9):.4f}"
    )
    if group[0]:
        print(
            f"a group of {group[0]} concurrent search calls (misses): {group[1]:.2f} s wall, "
            f"{group[1] / group[0]:.2f} s per call"
        )
    print(f"{'usefulness':>10s} {'useful share':>13s} {'|error|':>8s}")
    worst = 0.0
    for level, calls in levels.items():
        scored = [c for c in calls if c.question.checkable]
        share = sum(c.hit for c in scored) / max(len(scored), 1)
        worst = max(worst, abs(share - level))
        print(f"{level:10.2f} {share:13.2f} {abs(share - level):8.2f}")
    lh, ln = recall(live)
    sh, sn = recall(simulated)
    print(
        f"HEADLINE recall simulated {sh / max(sn, 1):.0%} vs live BM25 {lh / max(ln, 1):.0%} "
        f"({sn} questions); useful share within {worst:.2f} of the level; "
        f"search p50 {p50:.2f} s p90 {p90:.2f} s ({args.backend})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=50, help="per dataset (at most 100)")
    parser.add_argument("--datasets", nargs="+", default=["hotpotqa", "musique"])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--backend", choices=["embedded", "vllm"], default="embedded")
    parser.add_argument("--vllm-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (embedded)")
    parser.add_argument("--group", type=int, default=8, help="concurrent calls (0: skip)")
    parser.add_argument("--verbose", action="store_true")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
