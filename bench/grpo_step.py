"""GRPO step time on CPU: generation vs ToolActor wait vs the rest, cold and warm cache.

Starts a real ToolActor process (embedded backend, live BM25 ``search`` over the demo's
corpora) and runs short GRPO trainings from an SFT adapter (the demo's by default), each with
``search`` simulated in grounded episodes:

* for each group size (``--groups``, default 4 and 8; one prompt per step, so a step is one
  group): a *cold* run against the freshly started ToolActor, then the identical run again
  (same seed, same prompts) against the same process: *warm*, its cache filled by the first.
  The measured cache hit rate is printed next to it, since the sampled calls of the second run
  only repeat the first's as far as sampling on CPU is reproducible;
* per step, from the run's ``metrics.jsonl``: ``step_time`` (TRL: the whole training step),
  ``timing/generation_s`` and ``timing/tool_wait_s`` (the rollout's policy decoding and its
  wait on HTTP tool calls); ``other`` = step - generation - tool wait (rewards, reference and
  policy forward/backward, optimiser).

    .venv/bin/python bench/grpo_step.py [--adapter runs/demo/sft/run/final] [--steps 2]
        [--groups 4 8] [--set generation_backend=trainer] [--set bf16=false] ...

``--caches cold`` runs the cold runs only; ``zero std`` is TRL's ``frac_reward_zero_std`` and
``flat 1st`` the share of groups flat at their first draw under dynamic sampling.

The GRPO settings are the demo's (``trainer/configs/cpu-demo.yaml``), ``--set`` changing any of
them, so one backend or precision can be set against another on the same machine.

Target: tool wait under 10% of the step when warm. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from toolsim_trainer.clients import ActorClient
from toolsim_trainer.evaluate import search_toolset
from toolsim_trainer.services import ServiceProcess
from toolsim_trainer.train.common import ConfigError, parse_overrides
from toolsim_trainer.train.grpo import ToolsimGRPOConfig, run_grpo
from toolsim_trainer.train.layout import read_metrics
from toolsim_trainer.yamlconfig import parse_yaml

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "trainer" / "configs" / "cpu-demo.yaml"


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def step_split(run_dir: Path) -> dict[str, float]:
    steps = [r for r in read_metrics(run_dir) if "step_time" in r and "reward" in r]
    if not steps:
        raise SystemExit(f"{run_dir}: no GRPO step was logged")
    step = mean([float(r["step_time"]) for r in steps])
    gen = mean([float(r["timing/generation_s"]) for r in steps])
    wait = mean([float(r["timing/tool_wait_s"]) for r in steps])
    return {
        "steps": len(steps),
        "step_s": step,
        "generation_s": gen,
        "tool_wait_s": wait,
        "other_s": step - gen - wait,
        "cache_hit_rate": mean([float(r.get("tools/cache_hit_rate", 0.0)) for r in steps]),
        "calls_per_rollout": mean([float(r.get("tools/calls_per_rollout", 0.0)) for r in steps]),
        "zero_std": mean([float(r.get("frac_reward_zero_std", 0.0)) for r in steps]),
        # dynamic sampling (--set dynamic_sampling_retries=N): flat groups at the first draw
        "flat_first": mean(
            [float(r["sampling/flat_groups"]) for r in steps if "sampling/flat_groups" in r]
        ),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", type=Path, default=ROOT / "runs/demo/sft/run/final")
    p.add_argument("--data", type=Path, default=ROOT / "runs/demo/split/grpo.jsonl")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--groups", type=int, nargs="+", default=[4, 8])
    p.add_argument(
        "--caches",
        nargs="+",
        choices=["cold", "warm"],
        default=["cold", "warm"],
        help="warm repeats the cold run against the same ToolActor (needs cold first)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a GRPO config field over the demo's (repeatable)",
    )
    args = p.parse_args()
    if args.caches[0] != "cold":
        p.error("--caches: cold comes first (warm is the same run again on the filled cache)")
    try:
        overrides = parse_overrides(args.overrides)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from exc
    for path, how in ((args.adapter, "toolsim train sft"), (args.data, "make demo")):
        if not path.exists():
            raise SystemExit(f"{path} does not exist: run `{how}` first (or pass it explicitly)")
    demo = parse_yaml(DEMO.read_text())
    corpora = [str((ROOT / c).resolve()) for c in demo["corpora"]]
    env = {
        "TOOLSIM_SEARCH_CORPUS": json.dumps(corpora),
        "TOOLSIM_LIVE_TOOLS": json.dumps(["search"]),
        **demo.get("actor_env", {}),
    }
    work = Path(tempfile.mkdtemp(prefix="grpo-step-"))
    rows: list[dict[str, Any]] = []
    for group in args.groups:
        with ServiceProcess("toolactor", env=env, log_path=work / f"actor-{group}.log") as actor:

            async def register(url: str = actor.url) -> str:
                async with ActorClient(url) as client:
                    return await client.register_toolset(search_toolset("simulated"))

            toolset_id = asyncio.run(register())
            for cache in args.caches:
                section = {
                    **demo["grpo"],
                    **overrides,
                    "seed": 0,
                    "dataset_path": str(args.data),
                    "adapter_path": str(args.adapter),
                    "toolactor_url": actor.url,
                    "toolset_id": toolset_id,
                    "num_generations": group,
                    "per_device_train_batch_size": group,
                    "gradient_accumulation_steps": 1,
                    "max_steps": args.steps,
                    "save_strategy": "no",
                    "output_dir": str(work / f"g{group}-{cache}"),
                }
                print(f"== group {group}, cache {cache}", flush=True)
                run_dir = run_grpo(ToolsimGRPOConfig(**section))
                split = step_split(Path(run_dir))
                rows.append({"group": group, "cache": cache, **split})
    header = (
        f"{'group':>5} {'cache':>5} {'steps':>5} {'step s':>7} {'gen s':>7} {'tool s':>7} "
        f"{'other s':>7} {'tool %':>6} {'rollouts/s':>10} {'hit rate':>8} {'calls':>5} "
        f"{'zero std':>8} {'flat 1st':>8}"
    )
    print("\n" + header)
    for r in rows:
        share = r["tool_wait_s"] / r["step_s"]
        print(
            f"{r['group']:>5} {r['cache']:>5} {r['steps']:>5} {r['step_s']:>7.1f} "
            f"{r['generation_s']:>7.1f} {r['tool_wait_s']:>7.2f} {r['other_s']:>7.1f} "
            f"{share:>6.1%} {r['group'] / r['step_s']:>10.3f} {r['cache_hit_rate']:>8.2f} "
            f"{r['calls_per_rollout']:>5.2f} {r['zero_std']:>8.2f} {r['flat_first']:>8.2f}"
        )
    warm = {r["group"]: r for r in rows if r["cache"] == "warm"}
    cold = {r["group"]: r for r in rows if r["cache"] == "cold"}
    if not warm:
        headline = ", ".join(
            f"g{g}: tool wait {r['tool_wait_s'] / r['step_s']:.1%} cold, "
            f"{g / r['step_s']:.3f} rollouts/s, zero-std groups {r['zero_std']:.2f}"
            for g, r in sorted(cold.items())
        )
        print(f"HEADLINE {headline} (cold only)")
        return 0
    headline = ", ".join(
        f"g{g}: tool wait {warm[g]['tool_wait_s'] / warm[g]['step_s']:.1%} warm / "
        f"{cold[g]['tool_wait_s'] / cold[g]['step_s']:.1%} cold, "
        f"{g / warm[g]['step_s']:.3f} rollouts/s"
        for g in sorted(warm)
        if g in cold
    )
    print(f"HEADLINE {headline} (target: warm tool wait < 10%)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    sys.exit(main())
