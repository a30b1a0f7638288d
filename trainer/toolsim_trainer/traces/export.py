"""Export: the SFT and preference data sets, and the report of what was kept and why not.

Both data sets load with ``datasets.load_dataset("json", data_files=...)`` and go to TRL as they
are:

- ``sft.jsonl``: ``{"messages", "tools"}`` per kept trace and accepted repair. ``messages`` are
  ``grammar.trace_to_messages`` (tool-call ``arguments`` as objects, which the Qwen2.5 template
  renders with ``tojson``); ``tools`` is the toolset as a JSON string (TRL's documented form).
  ``SFTTrainer(..., args=SFTConfig(assistant_only_loss=True))`` trains on the assistant turns.
- ``preference.jsonl``: ``{"prompt", "chosen", "rejected", "tools"}`` with conversational values
  for ``RewardTrainer``: ``prompt`` = the system and user messages, ``chosen`` / ``rejected`` the
  rest of the better / worse trace. Pairs come from repairs (the repair that scored higher than
  its original, whether or not it was kept, against the original) and, with
  ``candidate_pairs``, from candidates of one question on one toolset (the best kept trace against
  each one not kept). A rejected trace that broke the grammar ends with the broken turn's raw
  text, so the reward model sees what the policy really wrote.

Simulator-flagged traces are in neither. The report counts, per teacher kind (``llm``, ``gold``
apart), the traces kept, repaired (repair accepted) and rejected, by the first reason.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolsim_trainer.answers import exact_match, f1_score
from toolsim_trainer.grammar import trace_to_messages
from toolsim_trainer.jsonl import write_jsonl_atomic, write_text_atomic
from toolsim_trainer.traces.records import TraceRecord
from toolsim_trainer.traces.repair import RepairOutcome
from toolsim_trainer.traces.scoring import Score, ScoreConfig

SFT_FILE = "sft.jsonl"
PREFERENCE_FILE = "preference.jsonl"
REPORT_FILE = "report.json"


@dataclass(frozen=True)
class ExportConfig:
    candidate_pairs: bool = True
    """Also pair a question's best kept candidate with each candidate not kept."""
    max_pairs_per_question: int = 2
    """Candidate pairs per question (repair pairs are not capped)."""
    min_margin: float = 0.0
    """A pair's chosen trace must score more than this above the rejected one."""

    def __post_init__(self) -> None:
        if self.max_pairs_per_question < 0 or self.min_margin < 0:
            raise ValueError("max_pairs_per_question and min_margin must be >= 0")


@dataclass
class Outcome:
    """Where one original trace ended up."""

    record: TraceRecord
    score: Score
    repair: RepairOutcome | None = None

    @property
    def status(self) -> str:
        """``kept``, ``repaired``, ``set_aside`` or ``rejected``."""
        if self.score.set_aside:
            return "set_aside"
        if self.score.kept:
            return "kept"
        if self.repair is not None and self.repair.accepted:
            return "repaired"
        return "rejected"

    @property
    def final(self) -> TraceRecord | None:
        """The trace that goes to SFT, if any."""
        status = self.status
        if status == "kept":
            return self.record
        if status == "repaired" and self.repair is not None:
            return self.repair.record
        return None


@dataclass
class Export:
    sft: list[dict[str, Any]] = field(default_factory=list)
    preference: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


def sft_row(record: TraceRecord) -> dict[str, Any]:
    """One SFT example: the conversation and its tools (as a JSON string)."""
    return {
        "messages": trace_to_messages(record.trace, arguments="object"),
        "tools": json.dumps(record.tools, ensure_ascii=False),
    }


def completion_messages(record: TraceRecord) -> list[dict[str, Any]]:
    """Everything after system + user; a turn that broke the grammar is kept as raw text."""
    messages = trace_to_messages(record.trace, arguments="object")[2:]
    if record.grammar_error is not None and record.raw_turns:
        messages.append({"role": "assistant", "content": record.raw_turns[-1]})
    return messages


def preference_row(chosen: TraceRecord, rejected: TraceRecord) -> dict[str, Any] | None:
    """A ``{prompt, chosen, rejected, tools}`` pair, or None when the two do not share a prompt."""
    prompt = trace_to_messages(chosen.trace)[:2]
    if prompt != trace_to_messages(rejected.trace)[:2] or chosen.tools != rejected.tools:
        return None
    worse = completion_messages(rejected)
    if not worse:
        return None
    return {
        "prompt": prompt,
        "chosen": completion_messages(chosen),
        "rejected": worse,
        "tools": json.dumps(chosen.tools, ensure_ascii=False),
    }


def outcomes_of(
    records: Sequence[TraceRecord], scores: dict[str, Score], repairs: Sequence[RepairOutcome]
) -> list[Outcome]:
    by_original = {r.of: r for r in repairs}
    return [Outcome(r, scores[r.key], by_original.get(r.key)) for r in records]


def build_export(
    outcomes: Sequence[Outcome], score_config: ScoreConfig, config: ExportConfig
) -> Export:
    export = Export()
    export.sft = [sft_row(final) for o in outcomes if (final := o.final) is not None]
    repair_pairs = _repair_pairs(outcomes, config)
    candidate_pairs = _candidate_pairs(outcomes, config) if config.candidate_pairs else []
    export.preference = repair_pairs + candidate_pairs
    export.report = report(outcomes, score_config)
    export.report["datasets"] = {
        "sft_rows": len(export.sft),
        "preference_rows": len(export.preference),
        "preference_from_repairs": len(repair_pairs),
        "preference_from_candidates": len(candidate_pairs),
    }
    return export


def _repair_pairs(outcomes: Sequence[Outcome], config: ExportConfig) -> list[dict[str, Any]]:
    pairs: list[dict[str, Any]] = []
    for o in outcomes:
        repair = o.repair
        if repair is None or repair.score.set_aside or o.score.set_aside:
            continue
        if repair.score.dimensions["grammar"].value < 1.0:
            continue  # a chosen trace must at least be well formed
        if repair.score.total > o.score.total + config.min_margin:
            row = preference_row(repair.record, o.record)
            if row is not None:
                pairs.append(row)
    return pairs


def _candidate_pairs(outcomes: Sequence[Outcome], config: ExportConfig) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str | None], list[Outcome]] = defaultdict(list)
    for o in outcomes:
        if o.status != "set_aside":
            groups[(o.record.id, o.record.toolset_id)].append(o)
    pairs: list[dict[str, Any]] = []
    for group in groups.values():
        kept = sorted((o for o in group if o.status == "kept"), key=lambda o: -o.score.total)
        if not kept:
            continue
        best = kept[0]
        worse = sorted((o for o in group if o.status == "rejected"), key=lambda o: o.score.total)
        made = 0
        for o in worse:
            if made >= config.max_pairs_per_question:
                break
            if best.score.total <= o.score.total + config.min_margin:
                continue
            row = preference_row(best.record, o.record)
            if row is not None:
                pairs.append(row)
                made += 1
    return pairs


def report(outcomes: Sequence[Outcome], score_config: ScoreConfig) -> dict[str, Any]:
    """Counts per teacher kind (LLM and gold apart) and the repair verdicts."""
    by_kind: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by_kind[o.record.teacher_kind].append(o)
    return {
        "threshold": score_config.threshold,
        "min_f1": score_config.min_f1,
        "weights": score_config.weights,
        "by_teacher": {kind: _kind_report(group) for kind, group in sorted(by_kind.items())},
    }


def _kind_report(group: Sequence[Outcome]) -> dict[str, Any]:
    statuses = Counter(o.status for o in group)
    rejected = Counter(
        o.score.primary_reason or "low_score" for o in group if o.status == "rejected"
    )
    set_aside = Counter(o.score.set_aside for o in group if o.status == "set_aside")
    repairs = [o.repair for o in group if o.repair is not None]
    n = len(group) or 1
    return {
        "traces": len(group),
        "kept": statuses["kept"],
        "repaired": statuses["repaired"],
        "rejected": statuses["rejected"],
        "set_aside": statuses["set_aside"],
        "rejected_by_reason": dict(rejected.most_common()),
        "set_aside_by_reason": {str(k): v for k, v in set_aside.items()},
        "repairs": dict(Counter(r.verdict for r in repairs)),
        "repair_invented_observations": sum(r.invented_observations for r in repairs),
        "mean_total": round(sum(o.score.total for o in group) / n, 4),
        "em": round(sum(exact_match(o.record.prediction, o.record.answers) for o in group) / n, 4),
        "f1": round(sum(f1_score(o.record.prediction, o.record.answers) for o in group) / n, 4),
        "mean_tool_calls": round(sum(len(o.record.observations) for o in group) / n, 3),
        "grammar_valid": round(sum(o.record.grammar_error is None for o in group) / n, 4),
    }


def write_export(export: Export, out_dir: Path) -> dict[str, Path]:
    """Write the three files atomically (a reader never sees half a data set)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "sft": out_dir / SFT_FILE,
        "preference": out_dir / PREFERENCE_FILE,
        "report": out_dir / REPORT_FILE,
    }
    write_jsonl_atomic(paths["sft"], export.sft)
    write_jsonl_atomic(paths["preference"], export.preference)
    write_text_atomic(paths["report"], json.dumps(export.report, indent=2, sort_keys=True) + "\n")
    return paths


def report_table(report_: dict[str, Any]) -> str:
    """The report as a text table: one column per teacher kind."""
    kinds = report_["by_teacher"]
    names = list(kinds)
    keys = ["traces", "kept", "repaired", "rejected", "set_aside", "mean_total", "em", "f1"]
    reasons = sorted({r for k in kinds.values() for r in k["rejected_by_reason"]})
    lines = ["".ljust(28) + "".join(n.rjust(10) for n in names)]
    for key in keys:
        lines.append(key.ljust(28) + "".join(str(kinds[n][key]).rjust(10) for n in names))
    for reason in reasons:
        values = "".join(
            str(kinds[n]["rejected_by_reason"].get(reason, 0)).rjust(10) for n in names
        )
        lines.append(f"  rejected: {reason}"[:28].ljust(28) + values)
    datasets = report_.get("datasets", {})
    lines += [f"{k}: {v}" for k, v in datasets.items()]
    return "\n".join(lines)
