"""``toolsim pipeline``: traces -> SFT -> GRPO (+ control) -> eval, in one resumable command.

Every stage talks to a real ToolActor process over HTTP (started here on a free port, its live
``search`` reading the configured corpora). The questions are split into train and held-out
*before* anything is generated; held-out questions are never traced or trained on. Each stage
writes into ``output_dir/<stage>`` and a ``done.json`` marker, so running the same command again
skips what is finished and resumes what is not.

Runs, all from the same seed:
  base      the packaged model, no training
  sft       Stage 1 on the gold-bootstrap traces
  grpo      Stage 2 from the SFT adapter, ``search`` simulated (grounded episodes)
  control   the same GRPO run with rewards shuffled within each batch
  grpo-live the same GRPO run with ``search`` live (BM25): sim-to-real, evaluated with live tools
Each run is evaluated on the held-out questions (grounded simulated search) and on the eval
sets listed in the config (live BM25 search over their real corpus), each in its own stage
(``eval/<run>``), so a run added to ``runs`` later is trained and evaluated alone;
``report.md`` holds the table with bootstrap 95% intervals, the paired differences, the GRPO
rewards and the stage wall times, ``report.png`` the comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolsim_trainer.agent import AgentLimits
from toolsim_trainer.clients import ActorClient
from toolsim_trainer.data import QuestionRow, load_rows, split_rows
from toolsim_trainer.services import ServiceProcess
from toolsim_trainer.summary import compare_runs, format_comparisons, grpo_summary
from toolsim_trainer.yamlconfig import parse_yaml

log = logging.getLogger(__name__)

RUNS = ("base", "sft", "grpo", "control", "grpo-live")
TRACE_TOOLS = ("simulated", "live", "mixed")
COMPARISONS = (
    ("sft", "base"),
    ("grpo", "sft"),
    ("grpo", "control"),
    ("grpo-live", "grpo"),  # sim-to-real: trained on live vs simulated search, evaluated live
)


@dataclass
class EvalSet:
    data: str
    """Question file (``eval/*.jsonl`` shape)."""
    limit: int | None = 100
    tools: str = "live"
    """``live`` (BM25 over the ToolActor's corpora), ``simulated`` or ``none``."""


@dataclass
class PipelineConfig:
    """The whole demo; the ``sft``/``grpo`` sections are passed to those stages' configs."""

    output_dir: str = "runs/demo"
    questions: list[str] = field(default_factory=list)
    """Training question files with gold answers and passages (HotpotQA/MuSiQue context)."""
    questions_limit: int | None = None
    """Use at most this many questions of each file (after loading, before the split)."""
    val_fraction: float = 0.2
    split_seed: int = 0
    corpora: list[str] = field(default_factory=list)
    """Passage files behind the live ``search`` (the eval sets' real corpora among them)."""
    trace_tools: str = "simulated"
    """Tools of the gold-bootstrap traces: ``simulated`` (grounded), ``live`` (BM25 over the
    corpora), or ``mixed``: every train question traced with both, so the SFT policy has seen
    both kinds of observation (trained on grounded ones only, it broke the grammar after most
    live observations)."""
    grpo_questions: int = 0
    """Train questions kept for GRPO alone (the last ones of the train split): never traced,
    so GRPO explores questions SFT did not learn the answers of. 0: GRPO reads the whole
    train split, as SFT did (its groups then tend to score alike)."""
    runs: list[str] = field(default_factory=lambda: list(RUNS))
    sft: dict[str, Any] = field(default_factory=dict)
    grpo: dict[str, Any] = field(default_factory=dict)
    eval_sets: list[EvalSet] = field(default_factory=list)
    eval_heldout_limit: int | None = None
    eval_limits: dict[str, Any] = field(default_factory=dict)
    """``AgentLimits`` fields for evaluation (max_turns, max_tool_calls, max_tokens)."""
    eval_concurrency: int = 8
    seed: int = 0
    actor_env: dict[str, str] = field(default_factory=dict)
    """Extra ``TOOLSIM_*`` settings of the ToolActor started for the run."""
    toolactor_url: str | None = None
    """A running ToolActor to use (``http://toolactor:8001`` in docker-compose.yml's ``train``
    profile) instead of starting one; its live ``search`` needs these ``corpora`` set there."""

    def __post_init__(self) -> None:
        self.eval_sets = [e if isinstance(e, EvalSet) else EvalSet(**e) for e in self.eval_sets]
        unknown = sorted(set(self.runs) - set(RUNS))
        if unknown:
            raise ValueError(f"runs {unknown} unknown; choose from {list(RUNS)}")
        needs = {"grpo": "sft", "control": "sft", "grpo-live": "sft"}
        for run, needed in needs.items():
            if run in self.runs and needed not in self.runs:
                raise ValueError(f"run {run!r} starts from the {needed!r} adapter: add {needed!r}")
        if not self.questions:
            raise ValueError("questions: list at least one training question file")
        for path in [*self.questions, *self.corpora, *(e.data for e in self.eval_sets)]:
            if not Path(path).is_file():
                raise ValueError(f"{path} does not exist (paths are relative to the working dir)")
        if self.trace_tools not in TRACE_TOOLS:
            raise ValueError(f"trace_tools must be one of {', '.join(TRACE_TOOLS)}")
        if self.trace_tools != "simulated" and not self.corpora:
            raise ValueError(f"trace_tools={self.trace_tools} searches live: list corpora")
        if any(e.tools == "live" for e in self.eval_sets) and not self.corpora:
            raise ValueError("live eval sets need corpora (the passages behind live search)")
        if self.toolactor_url is not None and self.actor_env:
            raise ValueError(
                "actor_env configures the ToolActor started here: set it on the "
                "one at toolactor_url instead, or leave toolactor_url out"
            )
        if self.grpo_questions < 0:
            raise ValueError("grpo_questions must be >= 0 (0: GRPO reads the whole train split)")
        AgentLimits(**self.eval_limits)  # fail now, not after training

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str]) -> PipelineConfig:
        raw = parse_yaml(Path(path).read_text()) or {}
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: expected key=value")
            target = raw
            *parents, leaf = key.split(".")
            for part in parents:
                target = target.setdefault(part, {})
            target[leaf] = parse_yaml(value)
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; valid: {sorted(names)}")
        return cls(**raw)


class Pipeline:
    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.root = Path(config.output_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}

    def stage(self, name: str, work: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Run ``work`` once: its result is kept in ``<stage>/done.json``."""
        folder = self.root / name
        marker = folder / "done.json"
        if marker.is_file():
            log.info("stage %s: done already (%s)", name, marker)
            result: dict[str, Any] = json.loads(marker.read_text())
            return result
        folder.mkdir(parents=True, exist_ok=True)
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        result = work(folder)
        result["wall_s"] = round(time.perf_counter() - started, 1)
        marker.write_text(json.dumps(result, indent=2))
        return result

    # -- stages ------------------------------------------------------------------------------

    def split(self, folder: Path) -> dict[str, Any]:
        rows: list[QuestionRow] = []
        for path in self.config.questions:
            rows.extend(load_rows(path, limit=self.config.questions_limit))
        train, val = split_rows(rows, self.config.val_fraction, self.config.split_seed)
        kept = self.config.grpo_questions
        if kept >= len(train):
            raise ValueError(
                f"grpo_questions={kept} leaves none of the {len(train)} train questions to trace"
            )
        traced, grpo_only = (train[:-kept], train[-kept:]) if kept else (train, train)
        parts = (("train", train), ("traced", traced), ("grpo", grpo_only), ("heldout", val))
        for name, part in parts:
            with (folder / f"{name}.jsonl").open("w") as out:
                for row in part:
                    out.write(json.dumps(_row_json(row), ensure_ascii=False) + "\n")
        return {"train": len(train), "val": len(val), "traced": len(traced), "grpo": len(grpo_only)}

    def run(self) -> Path:
        cfg = self.config
        split = self.stage("split", self.split)
        print(f"   {split['train']} train / {split['val']} held-out questions", flush=True)
        env = {  # live BM25 `search` over the corpora: grpo-live and the live eval sets use it
            "TOOLSIM_SEARCH_CORPUS": json.dumps([str(Path(c).resolve()) for c in cfg.corpora]),
            "TOOLSIM_LIVE_TOOLS": json.dumps(["search"]),
        }
        env.update(cfg.actor_env)
        with self.toolactor(env) as url:
            toolsets = asyncio.run(_register_toolsets(url))
            self.stage("traces", lambda f: self.traces(f, url, toolsets))
            adapters: dict[str, str | None] = {"base": None}
            if "sft" in cfg.runs:
                adapters["sft"] = self.stage("sft", self.sft)["adapter"]
            for run, tools in (
                ("grpo", "simulated"),
                ("control", "simulated"),
                ("grpo-live", "live"),
            ):
                if run in cfg.runs:
                    work = functools.partial(
                        self.grpo, run=run, url=url, toolset_id=toolsets[tools]
                    )
                    adapters[run] = self.stage(run, work)["adapter"]
            for run, adapter in adapters.items():  # one stage per run: adding a run later
                # (`make demo-controls`) evaluates only that run
                work = functools.partial(
                    self.evaluate, run=run, adapter=adapter, url=url, toolsets=toolsets
                )
                self.stage(f"eval/{run}", work)
        return self.report()

    @contextlib.contextmanager
    def toolactor(self, env: dict[str, str]) -> Iterator[str]:
        """The run's ToolActor URL: ``toolactor_url`` as given, or a process started here."""
        if self.config.toolactor_url is not None:
            yield self.config.toolactor_url.rstrip("/")
            return
        with ServiceProcess("toolactor", env=env, log_path=self.root / "toolactor.log") as actor:
            yield actor.url

    def traces(self, folder: Path, url: str, toolsets: dict[str, str]) -> dict[str, Any]:
        """Gold-bootstrap traces of the train split, scored, exported as the SFT set."""
        from toolsim_trainer.traces.export import (
            ExportConfig,
            build_export,
            outcomes_of,
            report_table,
            write_export,
        )
        from toolsim_trainer.traces.generate import GenerateConfig, Teacher, generate
        from toolsim_trainer.traces.scoring import ScoreConfig, score_record

        rows = load_rows(self.root / "split" / "traced.jsonl")
        mixed = self.config.trace_tools == "mixed"
        modes = ["simulated", "live"] if mixed else [self.config.trace_tools]
        records = []
        for mode in modes:
            config = GenerateConfig(
                out=folder / (f"traces-{mode}.jsonl" if mixed else "traces.jsonl"),
                toolset_id=toolsets[mode],
                seed=self.config.seed,
                concurrency=8,
                limits=AgentLimits(**self.config.eval_limits),
            )

            async def run(config: GenerateConfig = config) -> Any:
                async with ActorClient(url) as actor:
                    return await generate(rows, Teacher("gold"), actor, None, config)

            summary = asyncio.run(run())
            print(f"   {mode} search:", flush=True)
            print(summary.table(), flush=True)
            records.extend(summary.records)  # keys hold the toolset id: no clash across modes
        score_config = ScoreConfig()
        scores = {r.key: score_record(r, score_config) for r in records}
        export = build_export(outcomes_of(records, scores, []), score_config, ExportConfig())
        paths = write_export(export, folder)
        print(report_table(export.report), flush=True)
        return {
            "sft": str(paths["sft"]),
            "preference": str(paths["preference"]),
            "trace_tools": modes,
            **export.report["datasets"],
        }

    def sft(self, folder: Path) -> dict[str, Any]:
        from toolsim_trainer.train.sft import ToolsimSFTConfig, run_sft

        section = {
            "seed": self.config.seed,
            **self.config.sft,
            "dataset_path": json.loads((self.root / "traces" / "done.json").read_text())["sft"],
            "output_dir": str(folder / "run"),
        }
        run_dir = run_sft(ToolsimSFTConfig(**section))
        return {"run_dir": str(run_dir), "adapter": str(Path(run_dir) / "final")}

    def grpo(self, folder: Path, run: str, url: str, toolset_id: str) -> dict[str, Any]:
        from toolsim_trainer.train.grpo import ToolsimGRPOConfig, run_grpo

        sft_adapter = json.loads((self.root / "sft" / "done.json").read_text())["adapter"]
        section = {
            "seed": self.config.seed,
            **self.config.grpo,
            "dataset_path": str(self.root / "split" / "grpo.jsonl"),
            "adapter_path": sft_adapter,
            "toolactor_url": url,
            "toolset_id": toolset_id,
            "shuffle_rewards": run == "control",
            "output_dir": str(folder / "run"),
        }
        run_dir = run_grpo(ToolsimGRPOConfig(**section))
        return {
            "run_dir": str(run_dir),
            "adapter": str(Path(run_dir) / "final"),
            "training": grpo_summary(run_dir),
        }

    def evaluate(
        self, folder: Path, run: str, adapter: str | None, url: str, toolsets: dict[str, str]
    ) -> dict[str, Any]:
        """One run on the held-out questions (grounded simulated search) and the eval sets."""
        from toolsim_trainer.evaluate import EvalConfig, run_eval

        cfg = self.config
        limits = AgentLimits(**cfg.eval_limits)
        sets = [
            (
                "heldout",
                str(self.root / "split" / "heldout.jsonl"),
                "simulated",
                True,
                cfg.eval_heldout_limit,
            )
        ]
        sets += [(Path(e.data).stem, e.data, e.tools, False, e.limit) for e in cfg.eval_sets]
        results: dict[str, Any] = {}
        for bench, data, tools, grounded, limit in sets:
            summary = run_eval(
                EvalConfig(
                    data=Path(data),
                    output=folder / f"{bench}.jsonl",
                    run_name=run,
                    adapter=Path(adapter) if adapter else None,
                    tools=tools,  # type: ignore[arg-type]
                    toolactor_url=url if tools != "none" else None,
                    toolset_id=toolsets.get(tools),
                    grounded=grounded,
                    limits=limits,
                    concurrency=cfg.eval_concurrency,
                    seed=cfg.seed,
                    limit=limit,
                )
            )
            results[bench] = _summary_json(summary)
        return results

    def report(self) -> Path:
        from toolsim_trainer.eval_results import format_table, plot_comparison, summarize

        paths = sorted((self.root / "eval").glob("*/*.jsonl"))
        summaries = summarize(paths)
        table = format_table(summaries)
        plot_comparison(summaries, self.root / "report.png")
        comparisons = format_comparisons(compare_runs(paths, COMPARISONS))
        lines = ["# Pipeline report", "", "```", table, "```", ""]
        lines += ["## Paired differences (same questions, bootstrap 95%)", "", "```"]
        lines += [comparisons, "```", "", "## GRPO training", ""]
        for run in ("grpo", "control", "grpo-live"):
            marker = self.root / run / "done.json"
            if marker.is_file():
                t = json.loads(marker.read_text()).get("training", {})
                lines.append(
                    f"- {run}: {t.get('steps')} steps; mean reward first {t.get('window')} "
                    f"{t.get('reward_first', math.nan):.3f}, last {t.get('window')} "
                    f"{t.get('reward_last', math.nan):.3f}; frac_reward_zero_std "
                    f"{t.get('frac_reward_zero_std', math.nan):.2f}; tool calls/rollout "
                    f"{t.get('tool_calls_per_rollout', math.nan):.2f}"
                )
        lines += ["", "## Stage wall times", ""]
        stages = ["split", "traces", "sft", "grpo", "control", "grpo-live"]
        stages += [f"eval/{run}" for run in RUNS]
        walls = {
            stage: float(json.loads(marker.read_text()).get("wall_s", 0.0))
            for stage in stages
            if (marker := self.root / stage / "done.json").is_file()
        }
        lines += [f"- {stage}: {wall} s" for stage, wall in walls.items()]
        lines.append(f"- all stages: {sum(walls.values()):.0f} s")
        out = self.root / "report.md"
        out.write_text("\n".join(lines) + "\n")
        print(table)
        print(comparisons)
        print(f"report: {out} (plot {self.root / 'report.png'})")
        return out


async def _register_toolsets(url: str) -> dict[str, str]:
    """The evaluation's ``search`` toolset, simulated and live (ids are content-addressed)."""
    from toolsim_trainer.evaluate import search_toolset

    async with ActorClient(url) as actor:
        return {
            mode: await actor.register_toolset(search_toolset(mode))
            for mode in ("simulated", "live")
        }


def _row_json(row: QuestionRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "question": row.question,
        "answers": list(row.answers),
        "passages": [asdict(p) for p in row.passages],
        # already standalone (references resolved), so the loader reads them back unchanged
        "question_decomposition": [{"question": q} for q in row.subquestions],
    }


def _summary_json(summary: Any) -> dict[str, Any]:
    if hasattr(summary, "__dataclass_fields__"):
        return {k: v for k, v in asdict(summary).items() if isinstance(v, int | float | str)}
    return dict(summary)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="pipeline YAML (trainer/configs/cpu-demo.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def command(args: argparse.Namespace) -> int:
    config = PipelineConfig.from_yaml(args.config, args.overrides)
    # `kill` (SIGTERM) unwinds like Ctrl-C, so the ToolActor this run started is stopped too
    # instead of being left behind on its port; the stages resume on the next run
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    Pipeline(config).run()
    return 0


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)
