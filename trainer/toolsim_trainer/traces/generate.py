"""AutoAgent: a teacher writes a trace per (question, candidate), every call via the ToolActor.

For each unit: the question's toolset (the ToolMaker makes one from the question, or a named
toolset id), a fresh ToolActor episode (grounded with the row's gold answer and supporting
passages when it has them), then ``agent.run_agent`` with the teacher. The trace is written as one
``TraceRecord`` line as soon as it is finished.

Resumable: the output is a ``JsonlWriter`` keyed by ``(id, candidate)``, so a rerun skips what is
written and a line cut short by an interruption is dropped, never kept or duplicated. A unit that
fails (teacher, ToolMaker or ToolActor unreachable after their bounded retries, a timeout) is
*not* written there: it goes to ``<out>.failures.jsonl`` with its reason, the run goes on, and the
next run retries it.

Seeds: a unit's seed is a stable hash of ``(seed, id, candidate)``; it seeds the episode (so every
teacher and every repair of that unit sees the same simulated observation for the same call,
through the ToolActor's cache) and the teacher (``seed + turn`` per turn, in ``run_agent``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
from tqdm import tqdm  # type: ignore[import-untyped]

from toolsim_trainer.agent import AgentLimits, ToolContext, run_agent
from toolsim_trainer.answers import exact_match
from toolsim_trainer.clients import (
    ActorClient,
    MakerClient,
    ServiceError,
    ServiceUnavailableError,
)
from toolsim_trainer.data import QuestionRow, grounding_of
from toolsim_trainer.jsonl import JsonlWriter, key_by
from toolsim_trainer.policy import Policy, PolicyError
from toolsim_trainer.traces.gold import GoldError, GoldPolicy
from toolsim_trainer.traces.records import TraceRecord, record_of

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT = (ServiceUnavailableError, ServiceError, PolicyError, GoldError, httpx.HTTPError)
"""Failures that mark one unit failed (retried by the next run) instead of stopping the run."""


class UnitFailed(RuntimeError):
    """One (question, candidate) could not be generated; the message is the recorded reason."""


@dataclass(frozen=True)
class Teacher:
    """Who writes the traces: an LLM ``Policy`` shared by all units, or the gold bootstrap."""

    kind: Literal["llm", "gold"]
    policy: Policy | None = None

    def __post_init__(self) -> None:
        if (self.kind == "llm") != (self.policy is not None):
            raise ValueError("an llm teacher needs its policy; the gold teacher takes none")

    @property
    def name(self) -> str:
        return "gold" if self.policy is None else self.policy.name

    def policy_for(
        self, row: QuestionRow, tools: Sequence[dict[str, Any]], limits: AgentLimits
    ) -> Policy:
        """The policy that writes ``row``'s trace (the gold bootstrap is built per row)."""
        if self.policy is not None:
            return self.policy
        return GoldPolicy(row, tools, max_calls=limits.max_tool_calls)

    def metadata(self, limits: AgentLimits) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "temperature": limits.temperature,
            "max_tokens": limits.max_tokens,
            "max_turns": limits.max_turns,
            "max_tool_calls": limits.max_tool_calls,
        }


@dataclass(frozen=True)
class GenerateConfig:
    out: Path
    """The traces JSONL (appended to; rerun with the same path to resume)."""
    candidates: int = 1
    """Traces per question, each with its own seed (the unit is (id, candidate k))."""
    concurrency: int = 4
    """Units in flight at once."""
    seed: int = 0
    """Base seed; each unit's seed is derived from it, the id and k."""
    toolset_id: str | None = None
    """Use this registered toolset for every question instead of asking the ToolMaker."""
    maker_seed: int = 0
    """Seed of the ToolMaker's generation (the same question gets the same toolset)."""
    max_tools: int | None = None
    """Tools the ToolMaker generates per question (its default when None)."""
    limits: AgentLimits = field(default_factory=AgentLimits)
    unit_timeout_s: float = 900.0
    """A unit still running after this is marked failed ("timeout")."""
    progress: bool = True

    def __post_init__(self) -> None:
        if self.candidates < 1:
            raise ValueError("candidates must be >= 1 (--candidates N)")
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1 (--concurrency N)")
        if self.unit_timeout_s <= 0:
            raise ValueError("unit_timeout_s must be > 0")

    @property
    def failures_path(self) -> Path:
        return self.out.with_name(self.out.name + ".failures.jsonl")


@dataclass
class GenerateSummary:
    """What a run did and what the whole traces file now holds."""

    teacher: str
    teacher_kind: str
    units: int = 0
    written: int = 0
    skipped: int = 0
    failed: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    records: list[TraceRecord] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def tool_wait_share(self) -> float:
        """Share of the units' wall time spent waiting on the ToolActor."""
        wall = sum(r.wall_s for r in self.records)
        tools = sum(t.get("tools_s", 0.0) for r in self.records for t in r.turn_latencies)
        return tools / wall if wall else 0.0

    def table(self) -> str:
        records = self.records
        n = len(records) or 1
        rows = [
            ("teacher", f"{self.teacher} ({self.teacher_kind})"),
            ("units this run", str(self.units)),
            ("traces written", str(self.written)),
            ("skipped (already written)", str(self.skipped)),
            ("failed (retried next run)", str(self.failed)),
            ("traces in file", str(len(records))),
            ("mean tool calls", f"{sum(len(r.observations) for r in records) / n:.2f}"),
            ("grammar-valid share", f"{sum(r.grammar_error is None for r in records) / n:.3f}"),
            ("answered share", f"{sum(r.status == 'answered' for r in records) / n:.3f}"),
            (
                "exact match",
                f"{sum(exact_match(r.prediction, r.answers) for r in records) / n:.3f}",
            ),
            ("tool wait share", f"{self.tool_wait_share:.3f}"),
            ("wall s", f"{self.wall_s:.1f}"),
        ]
        rows += [(f"failed: {reason}", str(c)) for reason, c in self.failures.most_common()]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def unit_seed(seed: int, question_id: str, candidate: int) -> int:
    """A stable 31-bit seed per unit (the same across runs, teachers and machines)."""
    digest = hashlib.sha256(f"{seed}|{question_id}|{candidate}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


class ToolsetSource:
    """Each question's toolset, asked for once per run (candidates share it)."""

    def __init__(
        self, actor: ActorClient, maker: MakerClient | None, config: GenerateConfig
    ) -> None:
        if maker is None and config.toolset_id is None:
            raise ValueError("give a ToolMaker (--maker-url) or a toolset id (--toolset-id)")
        self._actor, self._maker, self._config = actor, maker, config
        self._cache: dict[str, dict[str, Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, row: QuestionRow) -> dict[str, Any]:
        key = self._config.toolset_id or row.id
        async with self._locks.setdefault(key, asyncio.Lock()):
            if key not in self._cache:
                self._cache[key] = await self._fetch(row)
            return self._cache[key]

    async def _fetch(self, row: QuestionRow) -> dict[str, Any]:
        if self._config.toolset_id is not None:
            return await service_call("toolactor", self._actor.get_toolset(self._config.toolset_id))
        assert self._maker is not None
        request = self._maker.create_toolset(
            row.question, seed=self._config.maker_seed, max_tools=self._config.max_tools
        )
        return await service_call("toolmaker", request)


async def service_call(service: str, call: Awaitable[T]) -> T:
    """Prefix a service failure with the service's name (the recorded reason says who failed)."""
    try:
        return await call
    except (ServiceUnavailableError, ServiceError, httpx.HTTPError) as exc:
        hint = ""
        if isinstance(exc, ServiceError) and exc.code == "toolset_not_found":
            hint = " (a ToolActor sees the ToolMaker's toolsets when both share TOOLSIM_REDIS_URL)"
        raise UnitFailed(f"{service}: {exc}{hint}") from exc


async def generate(
    rows: Sequence[QuestionRow],
    teacher: Teacher,
    actor: ActorClient,
    maker: MakerClient | None,
    config: GenerateConfig,
) -> GenerateSummary:
    """Write the missing traces of ``rows`` times ``config.candidates`` to ``config.out``."""
    started = time.perf_counter()
    summary = GenerateSummary(teacher=teacher.name, teacher_kind=teacher.kind)
    toolsets = ToolsetSource(actor, maker, config)
    with (
        JsonlWriter(config.out, key=key_by("id", "candidate")) as writer,
        JsonlWriter(config.failures_path, keep_empty=False) as failures,
    ):
        summary.records = [
            TraceRecord.from_json(r, f"{config.out}:{n}")
            for n, r in enumerate(writer.records, start=1)
        ]
        _check_teacher(summary.records, teacher, config.out)
        units = [(row, k) for row in rows for k in range(config.candidates)]
        todo = [(row, k) for row, k in units if (row.id, k) not in writer]
        summary.units, summary.skipped = len(todo), len(units) - len(todo)
        slots = asyncio.Semaphore(config.concurrency)
        bar = tqdm(total=len(todo), desc=f"traces {teacher.name}", disable=not config.progress)

        async def one(row: QuestionRow, k: int) -> None:
            async with slots:
                try:
                    record = await asyncio.wait_for(
                        _unit(row, k, teacher, actor, toolsets, config),
                        timeout=config.unit_timeout_s,
                    )
                except (UnitFailed, TimeoutError, *TRANSIENT) as exc:
                    reason = failure_reason(exc, config.unit_timeout_s)
                    _fail(failures, summary, row, k, teacher, reason)
                else:
                    writer.write(record.to_json())
                    summary.records.append(record)
                    summary.written += 1
                bar.update(1)

        async with asyncio.TaskGroup() as group:
            for row, k in todo:
                group.create_task(one(row, k))
        bar.close()
    summary.wall_s = time.perf_counter() - started
    return summary


async def _unit(
    row: QuestionRow,
    k: int,
    teacher: Teacher,
    actor: ActorClient,
    toolsets: ToolsetSource,
    config: GenerateConfig,
) -> TraceRecord:
    started = time.perf_counter()
    seed = unit_seed(config.seed, row.id, k)
    toolset = await toolsets.get(row)
    episode_id = await service_call(
        "toolactor",
        actor.create_episode(toolset["id"], seed=seed, grounding=grounding_of(row)),
    )
    policy = teacher.policy_for(row, toolset["tools"], config.limits)
    context = ToolContext(actor, toolset["id"], toolset["tools"], episode_id)
    result = await run_agent(policy, row.question, context, seed=seed, limits=config.limits)
    if result.status == "failed":
        raise UnitFailed(result.failure or "failed")
    return record_of(
        result,
        row,
        candidate=k,
        teacher=teacher.metadata(config.limits),
        seed=seed,
        toolset=toolset,
        episode_id=episode_id,
        wall_s=time.perf_counter() - started,
        maker_seed=None if config.toolset_id else config.maker_seed,
    )


def failure_reason(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timeout: the unit ran past {timeout_s:.0f}s"
    if isinstance(exc, PolicyError):
        return f"policy: {exc}"
    if isinstance(exc, GoldError):
        return f"gold: {exc}"
    if isinstance(exc, UnitFailed):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _fail(
    failures: JsonlWriter,
    summary: GenerateSummary,
    row: QuestionRow,
    k: int,
    teacher: Teacher,
    reason: str,
) -> None:
    log.warning("unit %s#%d failed: %s", row.id, k, reason)
    failures.write(
        {"id": row.id, "candidate": k, "teacher": teacher.name, "reason": reason, "at": time.time()}
    )
    summary.failed += 1
    summary.failures[_reason_class(reason)] += 1


def _reason_class(reason: str) -> str:
    """The failure's class for the summary (``toolactor``, ``policy``, ``timeout``, ...)."""
    return reason.split(":", 1)[0]


def _check_teacher(records: Sequence[TraceRecord], teacher: Teacher, out: Path) -> None:
    """One teacher per traces file: a resumed run must be the same teacher."""
    others = {r.teacher.get("name") for r in records} - {teacher.name}
    if others:
        raise ValueError(
            f"{out} holds traces of teacher {sorted(map(str, others))}, not {teacher.name!r}: "
            "write this teacher's traces to another file"
        )
