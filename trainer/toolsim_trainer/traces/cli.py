"""``toolsim traces generate | score | repair | export``: argument parsing and wiring only.

Each command is an object with ``configure_parser(parser)`` and ``command(args) -> int`` (what
``toolsim_trainer.cli`` mounts). Exit codes: 0 done, 1 some units failed (rerun the same command
to retry them: finished work is kept), 2 bad input (the message names the file and line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from toolsim_trainer.agent import AgentLimits
from toolsim_trainer.clients import ActorClient, MakerClient
from toolsim_trainer.data import DatasetError, load_rows
from toolsim_trainer.jsonl import JsonlError, iter_jsonl, write_jsonl_atomic
from toolsim_trainer.policy import OpenAIPolicy, Policy
from toolsim_trainer.traces.records import RecordError, TraceRecord
from toolsim_trainer.traces.scoring import Score, ScoreConfig, score_record

DEFAULT_ACTOR_URL = "http://127.0.0.1:8001"
DEFAULT_MAKER_URL = "http://127.0.0.1:8002"
REPAIRS_FILE = "repairs.jsonl"
T = TypeVar("T")


@dataclass(frozen=True)
class Command:
    configure_parser: Callable[[argparse.ArgumentParser], None]
    command: Callable[[argparse.Namespace], int]


POLICY_KINDS_HELP = (
    "local = the packaged model (or --*-model-dir) in process; openai = any OpenAI-compatible "
    "endpoint; gold = the bootstrap for small models: searches the question (or each step of "
    "its decomposition) through the ToolActor and answers the gold answer when an observation "
    "holds it, else 'unknown' (toolsim_trainer.traces.gold)"
)


class InputError(ValueError):
    """Bad input to a command (exit code 2); the message names the file and line."""


# ---------------------------------------------------------------------------- shared options


def _add_policy(p: argparse.ArgumentParser, role: str, kinds: Sequence[str], default: str) -> None:
    group = p.add_argument_group(f"{role} (who writes the turns)")
    group.add_argument(
        f"--{role}",
        choices=kinds,
        default=default,
        help=f"{POLICY_KINDS_HELP} (default {default})",
    )
    group.add_argument(f"--{role}-url", help="OpenAI-compatible base URL (.../v1) for 'openai'")
    group.add_argument(f"--{role}-model", help="model name at that endpoint for 'openai'")
    group.add_argument(
        f"--{role}-api-key-env", help="name of the environment variable holding the API key"
    )
    group.add_argument(f"--{role}-mode", choices=("text", "native"), default="text")
    group.add_argument(
        f"--{role}-model-dir", type=Path, help="'local': model folder (default: the packaged one)"
    )
    group.add_argument(f"--{role}-adapter", type=Path, help="'local': a LoRA adapter folder")
    group.add_argument(f"--{role}-threads", type=int, help="'local': torch threads")


def build_policy(args: argparse.Namespace, role: str) -> Policy | None:
    """The policy named by ``--ROLE`` (None for ``gold`` / ``none``)."""
    kind = getattr(args, role)
    if kind == "openai":
        url, model = getattr(args, f"{role}_url"), getattr(args, f"{role}_model")
        if not url or not model:
            raise InputError(f"--{role} openai needs --{role}-url and --{role}-model")
        key_env = getattr(args, f"{role}_api_key_env")
        api_key = os.environ.get(key_env) if key_env else None
        if key_env and api_key is None:
            raise InputError(f"--{role}-api-key-env {key_env}: that variable is not set")
        return OpenAIPolicy(url, model, api_key=api_key, mode=getattr(args, f"{role}_mode"))
    if kind == "local":
        from toolsim_trainer.local_policy import LocalPolicy

        return LocalPolicy(
            getattr(args, f"{role}_model_dir"),
            adapter=getattr(args, f"{role}_adapter"),
            num_threads=getattr(args, f"{role}_threads"),
        )
    return None


def _add_limits(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("agent limits")
    group.add_argument("--max-turns", type=int, default=AgentLimits.max_turns)
    group.add_argument("--max-tool-calls", type=int, default=AgentLimits.max_tool_calls)
    group.add_argument(
        "--max-tokens", type=int, default=AgentLimits.max_tokens, help="per assistant turn"
    )
    group.add_argument("--temperature", type=float, default=AgentLimits.temperature)
    group.add_argument(
        "--max-observation-chars",
        type=int,
        help="what the policy reads of each observation (default: all of it)",
    )


def _limits(args: argparse.Namespace) -> AgentLimits:
    return _checked(
        lambda: AgentLimits(
            max_turns=args.max_turns,
            max_tool_calls=args.max_tool_calls,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            max_observation_chars=args.max_observation_chars,
        )
    )


def _add_services(p: argparse.ArgumentParser, *, maker: bool) -> None:
    group = p.add_argument_group("services")
    group.add_argument(
        "--actor-url", default=os.environ.get("TOOLSIM_ACTOR_URL", DEFAULT_ACTOR_URL)
    )
    if maker:
        group.add_argument(
            "--maker-url", default=os.environ.get("TOOLSIM_MAKER_URL", DEFAULT_MAKER_URL)
        )
        group.add_argument("--toolset-id", help="use this toolset for every question (no maker)")
        group.add_argument("--max-tools", type=int, help="tools the ToolMaker makes per question")
        group.add_argument("--maker-seed", type=int, default=0)
    group.add_argument("--timeout-s", type=float, default=120.0, help="per HTTP request")
    group.add_argument("--retries", type=int, default=3, help="per HTTP request")
    group.add_argument("--unit-timeout-s", type=float, default=900.0, help="per unit of work")
    group.add_argument("--concurrency", type=int, default=4)
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_scoring(p: argparse.ArgumentParser) -> None:
    defaults = ScoreConfig()
    group = p.add_argument_group("scoring")
    group.add_argument("--threshold", type=float, default=defaults.threshold)
    group.add_argument("--min-f1", type=float, default=defaults.min_f1)
    group.add_argument("--ideal-calls", type=int, default=defaults.ideal_calls)
    group.add_argument("--token-budget", type=int, default=defaults.token_budget)


def _score_config(args: argparse.Namespace) -> ScoreConfig:
    return _checked(
        lambda: ScoreConfig(
            threshold=args.threshold,
            min_f1=args.min_f1,
            ideal_calls=args.ideal_calls,
            token_budget=args.token_budget,
        )
    )


def _checked(build: Callable[[], T]) -> T:
    """A config built from arguments; its validation error is bad input (exit code 2)."""
    try:
        return build()
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def _run(main: Callable[[], int]) -> int:
    """Bad input is exit code 2 with its message, never a traceback."""
    try:
        return main()
    except (InputError, DatasetError, JsonlError, RecordError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def load_records(paths: Sequence[Path]) -> list[TraceRecord]:
    """Every trace record of ``paths``; a bad line or a key seen twice names file and line."""
    records: list[TraceRecord] = []
    seen: dict[str, str] = {}
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path}: no such traces file")
        for line, raw in enumerate(iter_jsonl(path), start=1):
            where = f"{path}:{line}"
            record = TraceRecord.from_json(raw, where)
            if record.key in seen:
                raise InputError(f"{where}: trace {record.key} is also at {seen[record.key]}")
            seen[record.key] = where
            records.append(record)
    return records


# ---------------------------------------------------------------------------- generate


def _configure_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="questions (JSON list or JSONL)")
    p.add_argument("--out", type=Path, required=True, help="traces JSONL (resumed if it exists)")
    p.add_argument("--limit", type=int, help="first N questions only")
    p.add_argument("--candidates", type=int, default=1, help="traces per question")
    p.add_argument("--seed", type=int, default=0)
    _add_policy(p, "teacher", ("local", "openai", "gold"), "local")
    _add_services(p, maker=True)
    _add_limits(p)


def _generate(args: argparse.Namespace) -> int:
    from toolsim_trainer.traces.generate import GenerateConfig, Teacher, generate

    rows = load_rows(args.data, args.limit)
    limits = _limits(args)
    if args.candidates > 1 and limits.temperature == 0 and args.teacher != "gold":
        raise InputError(
            f"--candidates {args.candidates} with --temperature 0 gives identical teacher turns: "
            "pass --temperature 0.7 (or more)"
        )
    config = _checked(
        lambda: GenerateConfig(
            out=args.out,
            candidates=args.candidates,
            concurrency=args.concurrency,
            seed=args.seed,
            toolset_id=args.toolset_id,
            maker_seed=args.maker_seed,
            max_tools=args.max_tools,
            limits=limits,
            unit_timeout_s=args.unit_timeout_s,
            progress=not args.no_progress,
        )
    )
    policy = build_policy(args, "teacher")
    teacher = Teacher("gold") if policy is None else Teacher("llm", policy)

    async def main() -> int:
        options: dict[str, Any] = {"timeout_s": args.timeout_s, "retries": args.retries}
        async with ActorClient(args.actor_url, **options) as actor:
            maker = None if args.toolset_id else MakerClient(args.maker_url, **options)
            try:
                summary = await generate(rows, teacher, actor, maker, config)
            finally:
                if maker is not None:
                    await maker.aclose()
                if policy is not None:
                    await policy.aclose()
        print(summary.table())
        if summary.failed:
            print(f"{summary.failed} units failed (see {config.failures_path}); rerun to retry")
        return 1 if summary.failed else 0

    return asyncio.run(main())


# ---------------------------------------------------------------------------- score


def _configure_score(p: argparse.ArgumentParser) -> None:
    p.add_argument("--traces", type=Path, nargs="+", required=True, help="traces JSONL files")
    p.add_argument("--out", type=Path, help="scores JSONL (one line per trace)")
    _add_scoring(p)


def score_table(records: Sequence[TraceRecord], scores: dict[str, Score]) -> str:
    """Per teacher kind: traces, kept, set aside, and what the others fail first."""
    groups: dict[str, list[Score]] = defaultdict(list)
    for record in records:
        groups[record.teacher_kind].append(scores[record.key])
    lines = []
    for kind, group in sorted(groups.items()):
        kept = sum(s.kept for s in group)
        aside = sum(s.set_aside is not None for s in group)
        mean = sum(s.total for s in group) / len(group)
        lines.append(
            f"{kind}: {len(group)} traces, {kept} kept, {len(group) - kept - aside} to repair, "
            f"{aside} set aside, mean total {mean:.3f}"
        )
        reasons = Counter(s.primary_reason for s in group if not s.kept and not s.set_aside)
        lines += [f"  {reason}: {n}" for reason, n in reasons.most_common()]
    return "\n".join(lines)


def _score(args: argparse.Namespace) -> int:
    config = _score_config(args)
    records = load_records(args.traces)
    scores = {r.key: score_record(r, config) for r in records}
    if args.out:
        write_jsonl_atomic(args.out, (scores[r.key].to_json() for r in records))
    print(score_table(records, scores))
    return 0


# ---------------------------------------------------------------------------- repair + export


def _configure_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--traces", type=Path, nargs="+", required=True, help="traces JSONL files")
    p.add_argument(
        "--out-dir", type=Path, required=True, help=f"{REPAIRS_FILE}, sft/preference/report"
    )
    p.add_argument(
        "--no-candidate-pairs", action="store_true", help="preference pairs: repairs only"
    )
    p.add_argument("--max-pairs-per-question", type=int, default=2)
    _add_scoring(p)


def _configure_repair(p: argparse.ArgumentParser) -> None:
    _configure_export(p)
    p.add_argument("--repair-max-tokens", type=int, default=768, help="for the whole repair")
    _add_policy(p, "repairer", ("local", "openai"), "local")
    _add_services(p, maker=False)
    _add_limits(p)


def _export(args: argparse.Namespace, outcomes: Sequence[Any] | None = None) -> int:
    from toolsim_trainer.traces.export import (
        ExportConfig,
        build_export,
        outcomes_of,
        report_table,
        write_export,
    )
    from toolsim_trainer.traces.repair import load_outcome

    score_config = _score_config(args)
    records = load_records(args.traces)
    scores = {r.key: score_record(r, score_config) for r in records}
    repairs_path = args.out_dir / REPAIRS_FILE
    if outcomes is None:
        outcomes = (
            [
                load_outcome(raw, scores, score_config, f"{repairs_path}:{n}")
                for n, raw in enumerate(iter_jsonl(repairs_path), start=1)
            ]
            if repairs_path.is_file()
            else []
        )
    config = _checked(
        lambda: ExportConfig(
            candidate_pairs=not args.no_candidate_pairs,
            max_pairs_per_question=args.max_pairs_per_question,
        )
    )
    export = build_export(outcomes_of(records, scores, outcomes), score_config, config)
    paths = write_export(export, args.out_dir)
    print(report_table(export.report))
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


def _repair(args: argparse.Namespace) -> int:
    from toolsim_trainer.traces.repair import RepairConfig, run_repairs

    score_config = _score_config(args)
    records = load_records(args.traces)
    scores = {r.key: score_record(r, score_config) for r in records}
    limits = _limits(args)
    config = _checked(
        lambda: RepairConfig(
            out=args.out_dir / REPAIRS_FILE,
            score=score_config,
            limits=limits,
            max_tokens=args.repair_max_tokens,
            temperature=args.temperature,
            concurrency=args.concurrency,
            unit_timeout_s=args.unit_timeout_s,
            progress=not args.no_progress,
        )
    )
    repairer = build_policy(args, "repairer")
    assert repairer is not None

    async def main() -> tuple[list[Any], int]:
        options: dict[str, Any] = {"timeout_s": args.timeout_s, "retries": args.retries}
        try:
            async with ActorClient(args.actor_url, **options) as actor:
                return await run_repairs(records, scores, repairer, actor, config)
        finally:
            await repairer.aclose()

    outcomes, failed = asyncio.run(main())
    _export(args, outcomes)
    if failed:
        print(f"{failed} repairs failed (see {config.failures_path}); rerun to retry")
    return 1 if failed else 0


generate = Command(_configure_generate, lambda args: _run(lambda: _generate(args)))
score = Command(_configure_score, lambda args: _run(lambda: _score(args)))
repair = Command(_configure_repair, lambda args: _run(lambda: _repair(args)))
export = Command(_configure_export, lambda args: _run(lambda: _export(args)))
