"""Prefix caching in the embedded engine on an evaluation-like workload, off vs on in one run.

    .venv/bin/python bench/prefix_cache.py [--episodes 16] [--concurrency 16] [--dtype auto]

N concurrent 3-turn agent episodes of the packaged model, rendered as the evaluation renders
them (``LocalPolicy.prompt_ids``: TRL's Qwen2.5 template, the agent's system prompt and the
``search`` tool, HotpotQA training questions). Each turn is a new request: the conversation
so far, the completion of the turn before and a fixed ~150-token observation. Greedy, at
most 96 new tokens a turn. The same episodes run on engines without the prefix cache and
with it, in the order off, on, on, off (the first run of a process is slower: kernels warm
up); the wall time of each is its best. Outputs are compared token by token: in float32
they must be the same; in bfloat16 batch composition alone moves logits by ~0.4, so a
near-tie can flip with or without the cache (the second off run shows how often).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolsim.llm.base import Generation, GenerationRequest
from toolsim.llm.embedded import EmbeddedBackend
from toolsim.llm.prefix_cache import DEFAULT_PREFIX_CACHE_BYTES
from toolsim_trainer.evaluate import search_toolset
from toolsim_trainer.grammar import SYSTEM_PROMPT
from toolsim_trainer.local_policy import LocalPolicy, default_model_dir

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ROOT.parent / "shared" / "data" / "context" / "hotpotqa_train.json"
OBSERVATION = json.dumps(
    {
        "results": [
            {
                "title": "Ems (river)",
                "text": "The Ems is a river in northwestern Germany. It runs through the states "
                "of North Rhine-Westphalia and Lower Saxony, and flows into the Dollart bay of "
                "the Wadden Sea near Emden. Its total length is 371 kilometres.",
            },
            {
                "title": "Emden",
                "text": "Emden is an independent town and seaport in Lower Saxony in the north "
                "west of Germany, on the river Ems. It is the main town of the region of East "
                "Frisia and had a total population of 51,528 in 2011.",
            },
        ]
    }
)


@dataclass
class Run:
    label: str
    wall_s: float
    outputs: list[list[Generation]]
    prompt_tokens: int
    prefilled_tokens: int
    hit_tokens: int
    completion_tokens: int
    prefill_passes: int
    padded_tokens: int
    prefill_s: float
    decode_s: float
    cache_mb: float

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s


async def episode(
    backend: EmbeddedBackend,
    policy: LocalPolicy,
    tools: list[dict[str, Any]],
    question: str,
    *,
    turns: int,
    max_tokens: int,
) -> list[Generation]:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": question},
    ]
    outs: list[Generation] = []
    for turn in range(turns):
        prompt = policy.prompt_ids(messages, tools)
        request = GenerationRequest(
            messages=[], prompt_ids=prompt, temperature=0.0, max_tokens=max_tokens
        )
        out = await backend.generate(request)
        outs.append(out)
        messages += [
            {"role": "assistant", "content": out.text},
            {"role": "tool", "tool_call_id": f"call_{turn}", "content": OBSERVATION},
        ]
    return outs


async def run(args: argparse.Namespace, questions: list[str], cache_bytes: int, label: str) -> Run:
    policy = LocalPolicy(args.model)
    tools = search_toolset("simulated")["tools"]
    backend = EmbeddedBackend(
        policy.base_dir,
        max_batch_size=args.concurrency,
        num_threads=args.threads,
        dtype=args.dtype,
        prefix_cache_bytes=cache_bytes,
    )
    await backend.start()
    slots = asyncio.Semaphore(args.concurrency)

    async def one(question: str) -> list[Generation]:
        async with slots:
            return await episode(
                backend, policy, tools, question, turns=args.turns, max_tokens=args.max_tokens
            )

    try:
        started = time.perf_counter()
        outputs = list(await asyncio.gather(*(one(q) for q in questions)))
        wall = time.perf_counter() - started
        stats = backend.stats_snapshot()
    finally:
        await backend.aclose()
    return Run(
        label=label,
        wall_s=wall,
        outputs=outputs,
        prompt_tokens=stats.prompt_tokens,
        prefilled_tokens=stats.prefilled_tokens,
        hit_tokens=stats.prefix_hit_tokens,
        completion_tokens=stats.completion_tokens,
        prefill_passes=stats.prefill_passes,
        padded_tokens=stats.prefill_padded_tokens,
        prefill_s=stats.prefill_seconds,
        decode_s=stats.decode_seconds,
        cache_mb=stats.prefix_cache_bytes / 2**20,
    )


def differences(off: Run, on: Run) -> list[str]:
    """Where the two runs' token ids part, one line per differing episode."""
    lines = []
    for index, (a, b) in enumerate(zip(off.outputs, on.outputs, strict=True)):
        for turn, (x, y) in enumerate(zip(a, b, strict=True)):
            if x.token_ids != y.token_ids:
                xs, ys = x.token_ids or (), y.token_ids or ()
                at = next(
                    (i for i, (p, q) in enumerate(zip(xs, ys, strict=False)) if p != q), len(xs)
                )
                lines.append(f"episode {index} turn {turn + 1}: tokens part at {at}")
                break
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--model", type=Path, default=None, help="default: the packaged one")
    parser.add_argument(
        "--once",
        action="store_true",
        help="off then on, once each (default: off, on, on, off, the best wall of each; the "
        "second off run shows what batch timing alone changes in the outputs)",
    )
    args = parser.parse_args()
    rows = json.loads(QUESTIONS.read_text())
    questions = [str(r["question"]) for r in rows[: args.episodes]]
    policy = LocalPolicy(args.model or default_model_dir())
    system = policy.prompt_ids(
        [{"role": "system", "content": SYSTEM_PROMPT}], search_toolset("simulated")["tools"]
    )
    print(
        f"{len(questions)} episodes x {args.turns} turns, concurrency {args.concurrency}, "
        f"greedy, <= {args.max_tokens} new tokens a turn, dtype {args.dtype}, "
        f"system prompt {len(system)} tokens, observation "
        f"{len(policy.tokenizer(OBSERVATION)['input_ids'])} tokens"
    )
    order = ["off", "on"] if args.once else ["off", "on", "on", "off"]
    runs = []
    for label in order:
        cache_bytes = DEFAULT_PREFIX_CACHE_BYTES if label == "on" else 0
        runs.append(asyncio.run(run(args, questions, cache_bytes, label)))
    print(
        f"{'cache':<6}{'wall s':>8}{'prefill s':>10}{'decode s':>9}{'prompt tok':>11}"
        f"{'prefilled':>10}{'padded':>8}{'hit tok':>8}{'hit %':>6}{'gen tok':>8}"
        f"{'gen tok/s':>10}{'prefills':>9}{'cache MB':>9}"
    )
    for r in runs:
        share = 100 * r.hit_tokens / r.prompt_tokens
        print(
            f"{r.label:<6}{r.wall_s:>8.1f}{r.prefill_s:>10.1f}{r.decode_s:>9.1f}"
            f"{r.prompt_tokens:>11}{r.prefilled_tokens:>10}{r.padded_tokens:>8}"
            f"{r.hit_tokens:>8}{share:>6.1f}{r.completion_tokens:>8}{r.tokens_per_s:>10.1f}"
            f"{r.prefill_passes:>9}{r.cache_mb:>9.1f}"
        )
    off = min((r for r in runs if r.label == "off"), key=lambda r: r.wall_s)
    on = min((r for r in runs if r.label == "on"), key=lambda r: r.wall_s)
    diffs = differences(runs[0], runs[1])
    for line in diffs:
        print("on vs off:", line)
    if not args.once:
        control = differences(runs[0], runs[3])
        for line in control:
            print("off vs off:", line)
        print(f"control: {len(control)} of {len(questions)} episodes differ between the off runs")
    same = "identical" if not diffs else f"{len(diffs)} of {len(questions)} episodes differ"
    speedup = off.wall_s / on.wall_s
    print(
        f"HEADLINE prefix cache: {speedup:.2f}x wall ({off.wall_s:.1f} s -> {on.wall_s:.1f} s, "
        f"best of each), prefilled tokens {off.prefilled_tokens} -> {on.prefilled_tokens} "
        f"({100 * on.hit_tokens / on.prompt_tokens:.0f}% of prompt tokens from the cache), "
        f"greedy outputs {same}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
