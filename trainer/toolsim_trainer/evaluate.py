"""``toolsim eval``: a policy on question sets, with no tools, simulated tools or live ones.

Per question the policy runs the shared agent loop (``agent.run_agent``), every tool call over
HTTP to a ToolActor inside one episode of its own (grounded on the row's passages with
``--grounded``), and the answer is scored with the shared SQuAD/HotpotQA metrics
(``answers``). Each finished question is one JSONL line, appended whole and fsync'd, so a run
that stops (Ctrl-C, a crash, a dead ToolActor) is resumed by running the same command again:
questions already in the file are skipped, a truncated last line and questions that failed for
infrastructure reasons are redone, and nothing is duplicated. Greedy decoding by default, seeds
per question derived from ``--seed`` and the row id: a rerun reproduces the same answers
(exactly with ``--concurrency 1``; see ``EvalConfig.concurrency``).

The table per benchmark gives EM and F1 with bootstrap 95% intervals, ``cover`` (a gold answer
occurs in the prediction, or in the last turn when it has no ``<answer>``: a signal for policies
that do not follow the grammar yet), tool calls per question, the grammar-error rate, the
failed share and throughput. EM/F1 are over scored questions; failed ones (policy or tools
unavailable) are counted apart and redone on the next run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from toolsim_trainer.agent import NO_TOOLS, AgentLimits, AgentResult, ToolContext, run_agent
from toolsim_trainer.answers import answer_in_text, exact_match, f1_score
from toolsim_trainer.clients import ActorClient, ServiceError, ServiceUnavailableError
from toolsim_trainer.data import QuestionRow, grounding_of, load_rows
from toolsim_trainer.eval_results import (
    EvalSummary,
    ResultWriter,
    format_table,
    plot_comparison,
    prepare_output,
    read_results,
    summarize,
    summarize_records,
)
from toolsim_trainer.policy import OpenAIPolicy, Policy, PolicyError, check_endpoint
from toolsim_trainer.services import ServiceProcess

log = logging.getLogger(__name__)

ToolsMode = Literal["none", "simulated", "live"]
PolicyKind = Literal["local", "openai"]
TOOLS_MODES: tuple[ToolsMode, ...] = ("none", "simulated", "live")
DEFAULT_ACTOR_URL = "http://127.0.0.1:8001"

SEARCH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search Wikipedia; returns the most relevant passages",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "Keywords or a question."}},
            "required": ["query"],
            "additionalProperties": False,
        },
    },
}
SEARCH_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "results": {
            "type": "array",
            "maxItems": 5,
            # No additionalProperties: false on items: the live BM25 tool adds a "score".
            "items": {
                "type": "object",
                "properties": {"title": {"type": "string"}, "text": {"type": "string"}},
                "required": ["title", "text"],
            },
        }
    },
    "required": ["results"],
    "additionalProperties": False,
}


class EvalError(RuntimeError):
    """A run that cannot go on (bad toolset, output of another run); the message says why."""


def search_toolset(tools: ToolsMode) -> dict[str, Any]:
    """The ``POST /v1/toolsets`` body of the evaluation's ``search`` tool."""
    body: dict[str, Any] = {
        "tools": [SEARCH_TOOL],
        "output_schemas": {"search": SEARCH_OUTPUT_SCHEMA},
    }
    if tools == "live":
        body["modes"] = {"search": "live"}
    return body


# ---------------------------------------------------------------------------- config


@dataclass
class EvalConfig:
    """One evaluation run: a policy, a tool mode and one question file."""

    data: Path
    """Question file (``eval/*.jsonl`` or any file ``data.load_rows`` reads)."""
    output: Path
    """Per-question JSONL; an existing one is resumed."""
    run_name: str = ""
    """Label in tables and plots, and the results folder (default: see ``name``)."""
    policy: PolicyKind = "local"
    """``local``: a model folder in process; ``openai``: an OpenAI-compatible endpoint."""
    model: str | None = None
    """local: model folder (default the packaged model); openai: the served model name."""
    adapter: Path | None = None
    """local only: a PEFT LoRA adapter folder (or a training run folder with ``final/``)."""
    url: str | None = None
    """openai only: base URL ending in ``/v1``."""
    api_key: str | None = None
    """openai only: bearer token."""
    mode: Literal["text", "native"] = "text"
    """openai only: grammar as text, or OpenAI tool calling (vLLM ``--tool-call-parser hermes``)."""
    tools: ToolsMode = "none"
    """``none``, ``simulated`` (the ToolActor's LLM) or ``live`` (its BM25 search)."""
    toolactor_url: str | None = None
    """ToolActor base URL (default http://127.0.0.1:8001, or the one started for ``corpus``)."""
    toolset_id: str | None = None
    """Use this registered toolset instead of registering the ``search`` toolset."""
    corpus: Path | None = None
    """Start a ToolActor for this run whose live search reads this corpus file."""
    grounded: bool = False
    """Simulated tools: ground each question's episode on the row's passages."""
    limits: AgentLimits = field(default_factory=AgentLimits)
    """Turns, tool calls, tokens per turn, temperature (0 = greedy)."""
    concurrency: int = 8
    """Questions in flight at once (the local engine batches them). Greedy answers repeat
    exactly with 1; batched in bfloat16, which rows share a step varies from run to run and
    can flip a near-tie token, so a rerun may differ on a few questions."""
    threads: int | None = None
    """local: torch threads of the engine (default torch's choice). Use 1 on a shared machine:
    measured here under load, 1 thread ran 2-7x faster than 2 oversubscribed ones."""
    seed: int = 0
    """Base seed; each question's seed derives from it and the row id."""
    limit: int | None = None
    """Only the first ``limit`` rows of the file."""
    tool_retries: int = 3
    """Retries of a ToolActor request before the question is marked failed."""
    tool_timeout_s: float = 120.0
    """Longest wait for one ToolActor request."""
    progress: bool = True
    """Show a progress bar on stderr."""

    def __post_init__(self) -> None:
        self.data, self.output = Path(self.data), Path(self.output)
        if self.tools not in TOOLS_MODES:
            raise ValueError(f"tools must be one of {list(TOOLS_MODES)}, not {self.tools!r}")
        if self.policy == "openai" and (not self.url or not self.model):
            raise ValueError("policy openai needs url (ending in /v1) and model (the served name)")
        if self.policy == "openai" and self.adapter is not None:
            raise ValueError("adapter goes with policy local; serve the adapter with vLLM instead")
        if self.policy == "local" and (self.url or self.mode != "text"):
            raise ValueError("url and mode go with policy openai; policy local runs a folder")
        if self.policy not in ("local", "openai"):
            raise ValueError(f"policy must be local or openai, not {self.policy!r}")
        if self.corpus is not None and self.toolactor_url is not None:
            raise ValueError("give corpus (eval starts its own ToolActor) or toolactor_url")
        if self.tools == "none" and (self.grounded or self.toolset_id or self.corpus):
            raise ValueError("grounded, toolset_id and corpus need tools simulated or live")
        if self.grounded and self.tools != "simulated":
            raise ValueError("grounded applies to simulated tools only (live tools are real)")
        if self.concurrency < 1 or self.tool_retries < 0 or self.tool_timeout_s <= 0:
            raise ValueError("concurrency must be >= 1, tool_retries >= 0, tool_timeout_s > 0")
        if self.threads is not None and (self.threads < 1 or self.policy != "local"):
            raise ValueError("threads (>= 1) goes with policy local")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1 (or None for every row)")

    @property
    def benchmark(self) -> str:
        return self.data.stem

    @property
    def name(self) -> str:
        """``run_name``, or ``<policy label>-<tools>``: ``base-live``, ``sft1-simulated``..."""
        return self.run_name or f"{self.policy_label}-{self.tools}" + "-grounded" * self.grounded

    @property
    def policy_label(self) -> str:
        """The adapter's run folder, the model folder or served name, or ``base``."""
        if self.adapter is not None:
            adapter = Path(self.adapter)
            return (adapter.parent if adapter.name == "final" else adapter).name
        if self.model:
            return Path(self.model).name if self.policy == "local" else self.model
        return "base"

    def fingerprint(self) -> str:
        """What makes two runs comparable; a resumed file must hold only this fingerprint."""
        fields = {
            "data": str(self.data.resolve()),
            "policy": self.policy,
            "model": self.model,
            "adapter": str(self.adapter) if self.adapter else None,
            "url": self.url,
            "mode": self.mode,
            "tools": self.tools,
            "toolset_id": self.toolset_id,
            "grounded": self.grounded,
            "limits": dataclasses.asdict(self.limits),
            "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def question_seed(seed: int, row_id: str) -> int:
    """A per-question seed that does not depend on row order or on what ran before."""
    return int(hashlib.sha256(f"{seed}:{row_id}".encode()).hexdigest()[:8], 16)


# ---------------------------------------------------------------------------- running


def build_policy(config: EvalConfig) -> Policy:
    """The policy the config names (the local one loads its model on first use)."""
    if config.policy == "openai":
        assert config.url is not None and config.model is not None
        return OpenAIPolicy(config.url, config.model, api_key=config.api_key, mode=config.mode)
    from toolsim_trainer.local_policy import LocalPolicy

    return LocalPolicy(
        config.model,
        adapter=config.adapter,
        max_batch_size=config.concurrency,
        num_threads=config.threads,
    )


class _Run:
    """One session of a run: the policy, the ToolActor client and the toolset (fetched once)."""

    def __init__(self, config: EvalConfig, policy: Policy, actor: ActorClient | None) -> None:
        self.config = config
        self.policy = policy
        self.actor = actor
        self.session = uuid.uuid4().hex[:12]
        self.fingerprint = config.fingerprint()
        self._toolset: tuple[str, list[dict[str, Any]]] | None = None
        self._toolset_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(config.concurrency)

    async def toolset(self) -> tuple[str, list[dict[str, Any]]]:
        """(id, tool definitions): registered or looked up on first success. The ToolActor
        being down fails only the asking question; a refused toolset stops the run."""
        async with self._toolset_lock:
            if self._toolset is None:
                assert self.actor is not None
                try:
                    tid = self.config.toolset_id or await self.actor.register_toolset(
                        search_toolset(self.config.tools)
                    )
                    record = await self.actor.get_toolset(tid)
                except ServiceError as exc:
                    raise EvalError(_toolset_hint(self.config, exc)) from exc
                self._toolset = (tid, list(record["tools"]))
            return self._toolset

    async def tool_context(self, row: QuestionRow, seed: int) -> tuple[ToolContext, bool]:
        if self.actor is None:
            return NO_TOOLS, False
        tid, tools = await self.toolset()
        grounding = grounding_of(row) if self.config.grounded else None
        episode = await self.actor.create_episode(tid, seed=seed, grounding=grounding)
        return ToolContext(self.actor, tid, tools, episode), grounding is not None

    async def question(self, index: int, row: QuestionRow) -> dict[str, Any]:
        async with self._slots:
            started, clock = time.time(), time.perf_counter()
            seed = question_seed(self.config.seed, row.id)
            record = self._base_record(index, row, seed)
            try:
                tools, grounded = await self.tool_context(row, seed)
            except (ServiceUnavailableError, ServiceError) as exc:
                record.update(status="failed", failure=f"tools: {exc}")
            else:
                result = await run_agent(
                    self.policy, row.question, tools, seed=seed, limits=self.config.limits
                )
                record.update(_result_fields(result, row), episode_id=tools.episode_id)
                record["grounded"] = grounded
            record.update(
                latency_s=time.perf_counter() - clock, started_at=started, finished_at=time.time()
            )
            return record

    def _base_record(self, index: int, row: QuestionRow, seed: int) -> dict[str, Any]:
        return {
            "id": row.id,
            "index": index,
            "benchmark": self.config.benchmark,
            "run": self.config.name,
            "fingerprint": self.fingerprint,
            "session": self.session,
            "tools_mode": self.config.tools,
            "seed": seed,
            "question": row.question,
            "gold": list(row.answers),
            "prediction": None,
            "em": 0.0,
            "f1": 0.0,
            "cover": 0.0,
            "status": "failed",
            "failure": None,
            "tool_calls": 0,
            "calls": [],
            "grammar_error": None,
            "grammar_errors": 0,
            "turns": 0,
            "completion_tokens": 0,
            "policy_s": 0.0,
            "tools_s": 0.0,
            "episode_id": None,
            "grounded": False,
            "raw_turns": [],
        }


def _result_fields(result: AgentResult, row: QuestionRow) -> dict[str, Any]:
    """The scored fields of one finished agent run."""
    golds = row.answers
    last_text = result.raw_turns[-1] if result.raw_turns else ""
    calls = [c for t in result.trace.assistant_turns for c in t.tool_calls]
    error = result.grammar_error
    return {
        "prediction": result.prediction,
        "em": exact_match(result.prediction, golds),
        "f1": f1_score(result.prediction, golds),
        "cover": float(answer_in_text(golds, result.prediction or last_text)),
        "status": result.status,
        "failure": result.failure,
        "tool_calls": result.tool_calls,
        "calls": [
            {
                "name": c.name,
                "arguments": c.arguments,
                "ok": r.ok,
                "code": r.code,
                "source": r.source,
            }
            for c, r in zip(calls, result.tool_results, strict=False)
        ],
        "grammar_error": dataclasses.asdict(error) if error else None,
        "grammar_errors": int(error is not None),
        "turns": len(result.raw_turns),
        "completion_tokens": sum(int(t["tokens"]) for t in result.turn_latencies),
        "policy_s": sum(t["policy_s"] for t in result.turn_latencies),
        "tools_s": sum(t["tools_s"] for t in result.turn_latencies),
        "raw_turns": result.raw_turns,
    }


def _toolset_hint(config: EvalConfig, exc: ServiceError) -> str:
    hint = ""
    if config.tools == "live":
        hint = (
            "; start the ToolActor with TOOLSIM_SEARCH_CORPUS='[\"<corpus.json>\"]' and "
            "TOOLSIM_LIVE_TOOLS='[\"search\"]', or pass --corpus to let eval start one"
        )
    what = f"toolset {config.toolset_id}" if config.toolset_id else "the search toolset"
    return f"the ToolActor refused {what}: {exc}{hint}"


async def evaluate(config: EvalConfig, policy: Policy | None = None) -> EvalSummary:
    """Run (or resume) ``config``; a ``policy`` passed in is used as is and not closed."""
    rows = load_rows(config.data, limit=config.limit)
    done = prepare_output(config.output, config.fingerprint())
    todo = [(i, row) for i, row in enumerate(rows) if row.id not in done]
    owned = policy is None
    policy = policy or build_policy(config)
    try:
        async with _actor(config) as actor:
            run = _Run(config, policy, actor)
            if actor is not None and todo:
                # A refused toolset stops the run before the model loads; a ToolActor that
                # is down only fails the questions that need it (and they are retried).
                with contextlib.suppress(ServiceUnavailableError):
                    await run.toolset()
            await _start_policy(config, policy)
            await _run_questions(run, todo, len(rows) - len(todo))
    finally:
        if owned:
            await policy.aclose()
    wanted = {row.id for row in rows}  # a file run with a larger --limit may hold more
    records = [r for r in read_results(config.output) if r["id"] in wanted]
    return summarize_records(records, config.name, config.benchmark)


def run_eval(config: EvalConfig, policy: Policy | None = None) -> EvalSummary:
    """``evaluate`` from synchronous code."""
    return asyncio.run(evaluate(config, policy))


async def _start_policy(config: EvalConfig, policy: Policy) -> None:
    """Load the model / reach the endpoint before the clock starts (fail fast if it can't)."""
    if config.policy == "openai" and config.url is not None:
        await asyncio.to_thread(check_endpoint, config.url)
    await policy.start()


async def _run_questions(run: _Run, todo: Sequence[tuple[int, QuestionRow]], already: int) -> None:
    if not todo:
        return
    from tqdm import tqdm  # type: ignore[import-untyped]

    config = run.config
    writer = ResultWriter(config.output)
    bar = tqdm(
        total=already + len(todo),
        initial=already,
        desc=f"{config.name} {config.benchmark}",
        disable=not config.progress,
        file=sys.stderr,
    )

    async def one(index: int, row: QuestionRow) -> None:
        record = await run.question(index, row)
        writer.append(record)  # one coroutine at a time: lines never interleave
        bar.update(1)

    try:
        async with asyncio.TaskGroup() as group:
            for index, row in todo:
                group.create_task(one(index, row))
    except ExceptionGroup as errors:  # a refused toolset stops every question alike
        raise errors.exceptions[0] from None
    finally:
        bar.close()
        writer.close()


@contextlib.asynccontextmanager
async def _actor(config: EvalConfig) -> AsyncIterator[ActorClient | None]:
    """The ToolActor client (None without tools), on a ToolActor started here for ``corpus``."""
    if config.tools == "none":
        yield None
        return
    async with contextlib.AsyncExitStack() as stack:
        url = config.toolactor_url or DEFAULT_ACTOR_URL
        if config.corpus is not None:
            url = await stack.enter_async_context(spawn_actor(config.corpus))
        client = ActorClient(
            url,
            retries=config.tool_retries,
            timeout_s=config.tool_timeout_s,
            max_concurrency=max(16, config.concurrency),
        )
        async with client:
            yield client


@contextlib.asynccontextmanager
async def spawn_actor(corpus: Path) -> AsyncIterator[str]:
    """``toolsim serve toolactor`` on a free port with ``corpus`` behind its live search;
    yields its URL and stops it (by its handle) afterwards."""
    actor = _corpus_actor(corpus)
    try:
        await asyncio.to_thread(actor.start)
    except (RuntimeError, TimeoutError) as exc:
        raise EvalError(f"the ToolActor for {corpus} did not start: {exc}") from None
    try:
        yield actor.url
    finally:
        await asyncio.to_thread(actor.stop)


def _corpus_actor(corpus: Path) -> ServiceProcess:
    if not Path(corpus).is_file():
        raise ValueError(f"corpus {corpus} is not a file")
    env = {  # this process exists to run `search` for real over the corpus: enable it
        "TOOLSIM_SEARCH_CORPUS": json.dumps([str(Path(corpus).resolve())]),
        "TOOLSIM_LIVE_TOOLS": json.dumps(["search"]),
    }
    return ServiceProcess("toolactor", env=env)


# ---------------------------------------------------------------------------- command


def configure_parser(p: argparse.ArgumentParser) -> None:
    """``toolsim eval DATA... [--tools none|simulated|live] [--compare RESULTS...]``."""
    p.add_argument("data", nargs="*", type=Path, help="question files (eval/*.jsonl or alike)")
    p.add_argument(
        "--out-dir",
        type=Path,
        default=Path("runs/eval"),
        help="results go to OUT_DIR/RUN_NAME/<benchmark>.jsonl (default runs/eval)",
    )
    p.add_argument("--run-name", default="", help="label in tables (default MODEL-TOOLS)")
    p.add_argument("--policy", choices=["local", "openai"], default="local")
    p.add_argument("--model", help="local: model folder (default packaged); openai: model name")
    p.add_argument("--adapter", type=Path, help="local: PEFT LoRA adapter (or training run) folder")
    p.add_argument("--url", help="openai: base URL ending in /v1")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    p.add_argument(
        "--mode",
        choices=["text", "native"],
        default="text",
        help="openai: grammar as text, or OpenAI tool calling (vLLM hermes parser)",
    )
    p.add_argument("--tools", choices=list(TOOLS_MODES), default="none")
    p.add_argument("--toolactor-url", help=f"ToolActor base URL (default {DEFAULT_ACTOR_URL})")
    p.add_argument("--toolset-id", help="a registered toolset instead of the search toolset")
    p.add_argument("--corpus", type=Path, help="start a ToolActor with live search over this file")
    p.add_argument(
        "--grounded",
        action="store_true",
        help="simulated: ground each episode on the row's passages",
    )
    p.add_argument("--max-turns", type=int, default=AgentLimits.max_turns)
    p.add_argument("--max-tool-calls", type=int, default=AgentLimits.max_tool_calls)
    p.add_argument("--max-tokens", type=int, default=AgentLimits.max_tokens)
    p.add_argument("--temperature", type=float, default=AgentLimits.temperature)
    p.add_argument(
        "--max-observation-chars",
        type=int,
        help="what the policy reads of each observation (default: all of it)",
    )
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--threads", type=int, help="local: torch threads (1 on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="only the first N questions of each file")
    p.add_argument("--tool-retries", type=int, default=3)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--compare",
        nargs="+",
        type=Path,
        default=[],
        metavar="RESULTS",
        help="earlier results files to put in the table and the plot",
    )
    p.add_argument("--plot", type=Path, help="comparison PNG (default OUT_DIR/comparison.png)")
    p.set_defaults(func=command)


def configs_from_args(args: argparse.Namespace) -> list[EvalConfig]:
    """One config per question file (they share everything else)."""
    limits = AgentLimits(
        max_turns=args.max_turns,
        max_tool_calls=args.max_tool_calls,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        max_observation_chars=args.max_observation_chars,
    )
    configs = []
    for data in args.data:
        config = EvalConfig(
            data=data,
            output=Path("."),
            run_name=args.run_name,
            policy=args.policy,
            model=args.model,
            adapter=args.adapter,
            url=args.url,
            api_key=args.api_key,
            mode=args.mode,
            tools=args.tools,
            toolactor_url=args.toolactor_url,
            toolset_id=args.toolset_id,
            corpus=args.corpus,
            grounded=args.grounded,
            limits=limits,
            concurrency=args.concurrency,
            threads=args.threads,
            seed=args.seed,
            limit=args.limit,
            tool_retries=args.tool_retries,
            progress=not args.no_progress,
        )
        config.output = args.out_dir / config.name / f"{config.benchmark}.jsonl"
        configs.append(config)
    return configs


def command(args: argparse.Namespace) -> int:
    """Run every file, print the table (with ``--compare`` runs) and, for several runs, write
    the plot. Exit 0; 3 when some questions failed (run the same command again to redo them)."""
    configs = configs_from_args(args)
    if not configs and not args.compare:
        raise ValueError("give question files to evaluate, or --compare results files")
    for config in configs:  # a bad row in the last file fails now, not after hours of the first
        load_rows(config.data, limit=config.limit)
    try:
        outputs = asyncio.run(_evaluate_all(configs))
    except (EvalError, ServiceUnavailableError, PolicyError) as exc:
        print(f"toolsim eval: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("toolsim eval: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    summaries = [*outputs, *summarize(args.compare)]
    print(format_table(summaries))
    if len({s.run for s in summaries}) > 1:
        print(plot_comparison(summaries, args.plot or args.out_dir / "comparison.png"))
    failed = sum(s.failed for s in outputs)
    if failed:
        print(
            f"toolsim eval: {failed} questions failed; run the same command again to redo "
            "them (finished ones are kept)",
            file=sys.stderr,
        )
        return 3
    return 0


async def _evaluate_all(configs: Sequence[EvalConfig]) -> list[EvalSummary]:
    """Every file with one policy (one model load)."""
    if not configs:
        return []
    policy = build_policy(configs[0])
    try:
        return [await evaluate(config, policy) for config in configs]
    finally:
        await policy.aclose()
