"""AutoAgent / AutoTraj: trace throughput, ToolActor wait share, kept / repaired / rejected.

Starts a real redis-server, ToolMaker and ToolActor (embedded backend) on free ports, then:

1. asks the ToolMaker for every question's toolset once (timed apart, so the throughput figures
   are trace generation only);
2. throughput: the packaged model as teacher (``LocalPolicy``, in process, continuously batched)
   writes traces at each ``--concurrency`` (a different seed each, so no run is served from the
   ToolActor cache the previous one filled): traces/min and the share of the units' wall time
   spent waiting on the ToolActor;
3. split: the LLM teacher and the ``gold`` bootstrap on the same ``--questions``, scored and
   repaired (repairer = the packaged model), counted per teacher kind.

    .venv/bin/python bench/traces.py [--questions 50] [--throughput-questions 8]
        [--concurrency 1 8] [--data ../shared/data/context/hotpotqa_train.json]
        [--toolset maker|named] [--backend embedded|vllm] [--vllm-url URL]

``--backend vllm`` runs every model call on one real vLLM CPU server (started here with
``scripts/serve-vllm.sh`` unless ``--vllm-url`` names one): the ToolMaker's and the ToolActor's
backend, and the teacher and repairer through its OpenAI-compatible endpoint
(``OpenAIPolicy``, text mode: the same prompt and grammar as the local teacher).

``--toolset named`` skips the ToolMaker's generation: one hand-written ``search`` tool
(``{"result": text}`` output) registered through the ToolMaker serves every question.

Run it on an otherwise idle machine (the 2 cores are shared by the model of every process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import server
from toolsim_trainer.agent import AgentLimits
from toolsim_trainer.clients import ActorClient, MakerClient
from toolsim_trainer.data import QuestionRow, load_rows
from toolsim_trainer.local_policy import LocalPolicy
from toolsim_trainer.policy import OpenAIPolicy, Policy
from toolsim_trainer.services import ServiceProcess, free_port
from toolsim_trainer.traces.export import ExportConfig, build_export, outcomes_of
from toolsim_trainer.traces.generate import GenerateConfig, Teacher, generate
from toolsim_trainer.traces.records import TraceRecord
from toolsim_trainer.traces.repair import RepairConfig, run_repairs
from toolsim_trainer.traces.scoring import ScoreConfig, score_record

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "context" / "hotpotqa_train.json"


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: apt-get install redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


NAMED_SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search Wikipedia and return the passage that answers the query.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
}


async def warm_toolsets(maker: MakerClient, rows: list[QuestionRow]) -> float:
    """Seconds per toolset when the ToolMaker makes them (later runs hit its cache)."""
    started = time.perf_counter()
    for row in rows:
        await maker.create_toolset(row.question, seed=0)
    return (time.perf_counter() - started) / max(1, len(rows))


async def named_toolset(maker: MakerClient) -> str:
    """The hand-written search toolset, registered through the ToolMaker."""
    record = await maker.json("POST", "/v1/toolsets", {"tools": [NAMED_SEARCH]})
    return str(record["id"])


def teacher_policy(args: argparse.Namespace, vllm_url: str | None) -> Policy:
    """The packaged model as teacher: in process (embedded) or behind the vLLM server."""
    if vllm_url is not None:
        return OpenAIPolicy(vllm_url, args.vllm_model, timeout_s=600)
    return LocalPolicy(max_batch_size=max(args.concurrency), num_threads=args.threads)


async def run(
    args: argparse.Namespace, actor_url: str, maker_url: str, work: Path, vllm_url: str | None
) -> None:
    rows = load_rows(args.data, args.questions)
    limits = AgentLimits(max_turns=4, max_tool_calls=3, max_tokens=args.max_tokens)
    policy = teacher_policy(args, vllm_url)
    async with ActorClient(actor_url) as actor, MakerClient(maker_url) as maker:
        toolset_id = None
        if args.toolset == "named":
            toolset_id = await named_toolset(maker)
            print(f"toolset: {toolset_id} (hand-written search) for every question")
        else:
            per_toolset = await warm_toolsets(maker, rows)
            made = f"{len(rows)} made, {per_toolset:.1f} s each"
            print(f"toolsets: {made} (ToolMaker, {args.backend})")
        await policy.start()
        print(f"{'concurrency':>11}  {'traces':>6}  {'wall s':>7}  {'traces/min':>10}  wait share")
        rates: dict[int, float] = {}
        for c in args.concurrency:
            config = GenerateConfig(
                out=work / f"throughput_c{c}.jsonl", concurrency=c, seed=1000 + c,
                limits=limits, progress=False, toolset_id=toolset_id,
            )  # fmt: skip
            summary = await generate(
                rows[: args.throughput_questions], Teacher("llm", policy), actor, maker, config
            )
            rates[c] = summary.written / summary.wall_s * 60
            print(
                f"{c:>11}  {summary.written:>6}  {summary.wall_s:>7.1f}  {rates[c]:>10.2f}  "
                f"{summary.tool_wait_share:.3f}"
            )
        split = await split_run(
            rows, policy, actor, maker, limits, work, args.concurrency[-1], toolset_id
        )
    await policy.aclose()
    report_split(split)
    lo, hi = args.concurrency[0], args.concurrency[-1]
    print(
        f"backend: {args.backend}; toolsets: {args.toolset}; "
        f"questions: {len(rows)} of {args.data.name}"
    )
    llm, gold = split["by_teacher"].get("llm", {}), split["by_teacher"].get("gold", {})
    print(
        f"HEADLINE traces/min {rates[hi]:.2f} at c={hi} vs {rates[lo]:.2f} at c={lo} "
        f"({rates[hi] / rates[lo]:.2f}x); kept+repaired of {len(rows)}: "
        f"LLM {llm.get('kept', 0) + llm.get('repaired', 0)}, "
        f"gold {gold.get('kept', 0) + gold.get('repaired', 0)}"
    )


async def split_run(
    rows: list[QuestionRow],
    policy: Policy,
    actor: ActorClient,
    maker: MakerClient,
    limits: AgentLimits,
    work: Path,
    concurrency: int,
    toolset_id: str | None,
) -> dict[str, Any]:
    """LLM teacher and gold bootstrap on the same questions, scored, repaired, counted."""
    records: list[TraceRecord] = []
    for name, teacher in (("llm", Teacher("llm", policy)), ("gold", Teacher("gold"))):
        config = GenerateConfig(
            out=work / f"split_{name}.jsonl", concurrency=concurrency, limits=limits,
            progress=False, toolset_id=toolset_id,
        )  # fmt: skip
        summary = await generate(rows, teacher, actor, maker, config)
        records += summary.records
        rate = summary.written / summary.wall_s * 60
        print(
            f"split {name}: {summary.written} traces in {summary.wall_s:.1f} s ({rate:.2f}/min), "
            f"mean tool calls {mean_calls(summary.records):.2f}, "
            f"tool wait share {summary.tool_wait_share:.3f}"
        )
    score_config = ScoreConfig()
    scores = {r.key: score_record(r, score_config) for r in records}
    repair_config = RepairConfig(
        out=work / "repairs.jsonl", limits=limits, max_tokens=256, concurrency=concurrency,
        progress=False,
    )  # fmt: skip
    started = time.perf_counter()
    outcomes, failed = await run_repairs(records, scores, policy, actor, repair_config)
    print(f"repairs: {len(outcomes)} in {time.perf_counter() - started:.1f} s, {failed} failed")
    export = build_export(outcomes_of(records, scores, outcomes), score_config, ExportConfig())
    report: dict[str, Any] = export.report
    return report


def mean_calls(records: list[TraceRecord]) -> float:
    return sum(len(r.observations) for r in records) / max(1, len(records))


def report_split(report: dict[str, Any]) -> None:
    kinds = report["by_teacher"]
    print(f"{'teacher':>8}  {'traces':>6}  {'kept':>5}  {'repaired':>8}  {'rejected':>8}  "
          f"{'aside':>5}  {'EM':>5}  {'grammar':>7}  rejected by reason")  # fmt: skip
    for kind, k in kinds.items():
        reasons = ", ".join(f"{r} {n}" for r, n in k["rejected_by_reason"].items())
        print(
            f"{kind:>8}  {k['traces']:>6}  {k['kept']:>5}  {k['repaired']:>8}  {k['rejected']:>8}"
            f"  {k['set_aside']:>5}  {k['em']:>5.2f}  {k['grammar_valid']:>7.2f}  {reasons}"
        )
    print(json.dumps(report["datasets"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--questions", type=int, default=50, help="questions of the split")
    parser.add_argument("--throughput-questions", type=int, default=8)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-tokens", type=int, default=128, help="per teacher turn")
    parser.add_argument("--threads", type=int, default=None, help="torch threads, teacher")
    parser.add_argument("--toolset", choices=("maker", "named"), default="maker")
    parser.add_argument("--out-dir", type=Path, help="keep the traces here (default: temp)")
    parser.add_argument("--backend", choices=("embedded", "vllm"), default="embedded")
    parser.add_argument("--vllm-url", help="use this vLLM server (…/v1) instead of starting one")
    parser.add_argument("--vllm-model", default="smollm2", help="its served model name")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    work = args.out_dir or Path(tempfile.mkdtemp(prefix="bench-traces-"))
    work.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        vllm_url = args.vllm_url
        if args.backend == "vllm" and vllm_url is None:
            port = free_port()
            cmd = ["bash", str(ROOT / "scripts" / "serve-vllm.sh"), str(port)]
            vllm_url = stack.enter_context(server(cmd, port, timeout_s=900)) + "/v1"
        redis_url = stack.enter_context(redis_server(work))
        env = {"TOOLSIM_REDIS_URL": redis_url}
        if args.backend == "vllm":
            assert vllm_url is not None
            env |= {"TOOLSIM_BACKEND": "vllm", "TOOLSIM_VLLM_URL": vllm_url}
        maker = stack.enter_context(
            ServiceProcess("toolmaker", env=env, log_path=work / "maker.log")
        )
        actor = stack.enter_context(
            ServiceProcess("toolactor", env=env, log_path=work / "actor.log")
        )
        asyncio.run(run(args, actor.url, maker.url, work, vllm_url))
    print(f"traces in {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
