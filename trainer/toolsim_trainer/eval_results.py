"""Evaluation results: the per-question JSONL file, summaries, the table and the plot.

The file is the run's only state. Records are appended whole and fsync'd, so an interrupted
run leaves at most one truncated last line, which ``read_results`` ignores; ``prepare_output``
drops it (and questions that failed for infrastructure reasons) before a resumed run appends.
``summarize`` reads any set of files back into one row per (run, benchmark).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolsim_trainer.stats import bootstrap_ci

log = logging.getLogger(__name__)


class ResultsError(ValueError):
    """A results file that cannot be read or resumed; the message names the file and line."""


# ---------------------------------------------------------------------------- results file


def read_results(path: Path) -> list[dict[str, Any]]:
    """The records of a results file; a truncated last line (an interrupted write) is ignored,
    a broken line elsewhere is an error naming the line."""
    if not path.is_file():
        return []
    lines = path.read_text("utf-8").split("\n")
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as exc:
            if number == len(lines):  # no newline after it: the write never finished
                log.warning("%s:%d: ignoring a truncated last line", path, number)
                continue
            raise ResultsError(
                f"{path}:{number}: not a JSON record ({exc}); fix or delete it"
            ) from exc
    return records


def prepare_output(path: Path, fingerprint: str) -> dict[str, dict[str, Any]]:
    """The finished records of ``path`` by id; failed ones and a truncated tail are dropped
    (the file is rewritten atomically without them) so they run again."""
    records = read_results(path)
    foreign = {r.get("fingerprint") for r in records} - {fingerprint}
    if foreign:
        raise ResultsError(
            f"{path} holds results of another configuration (fingerprints "
            f"{sorted(map(str, foreign))}, this run is {fingerprint}): give another output path "
            "or delete the file"
        )
    done = {r["id"]: r for r in records if r.get("status") != "failed"}
    kept = list(done.values())
    if path.is_file() and (len(kept) != len(records) or not _ends_cleanly(path)):
        _rewrite(path, kept)
    return done


def _ends_cleanly(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _rewrite(path: Path, records: Sequence[dict[str, Any]]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ResultWriter:
    """Appends whole records: one ``write`` of a full line, then flush and fsync."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


# ---------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class EvalSummary:
    run: str
    benchmark: str
    n: int
    """Scored questions (failed ones excluded)."""
    em: float
    em_ci: tuple[float, float]
    f1: float
    f1_ci: tuple[float, float]
    cover: float
    tool_calls: float
    """Mean tool calls per scored question."""
    grammar_error_rate: float
    failed: int
    failed_share: float
    questions_per_minute: float
    statuses: dict[str, int]


def summarize_records(
    records: Sequence[dict[str, Any]], run: str = "", benchmark: str = ""
) -> EvalSummary:
    """The table row of one run on one benchmark."""
    scored = [r for r in records if r["status"] != "failed"]
    failed = len(records) - len(scored)
    statuses: dict[str, int] = {}
    for record in records:
        statuses[record["status"]] = statuses.get(record["status"], 0) + 1
    em, f1 = [float(r["em"]) for r in scored], [float(r["f1"]) for r in scored]
    nan = (math.nan, math.nan)
    return EvalSummary(
        run=run or (records[0]["run"] if records else ""),
        benchmark=benchmark or (records[0]["benchmark"] if records else ""),
        n=len(scored),
        em=_mean(em),
        em_ci=bootstrap_ci(em) if em else nan,
        f1=_mean(f1),
        f1_ci=bootstrap_ci(f1) if f1 else nan,
        cover=_mean([float(r["cover"]) for r in scored]),
        tool_calls=_mean([float(r["tool_calls"]) for r in scored]),
        grammar_error_rate=_mean([float(r["status"] == "grammar_error") for r in scored]),
        failed=failed,
        failed_share=failed / len(records) if records else math.nan,
        questions_per_minute=_throughput(records),
        statuses=statuses,
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _throughput(records: Sequence[dict[str, Any]]) -> float:
    """Questions per minute of wall time, summed over the sessions (runs and resumes)."""
    sessions: dict[str, tuple[float, float, int]] = {}
    for r in records:
        start, end, count = sessions.get(r["session"], (math.inf, -math.inf, 0))
        sessions[r["session"]] = (
            min(start, r["started_at"]),
            max(end, r["finished_at"]),
            count + 1,
        )
    seconds = sum(end - start for start, end, _ in sessions.values())
    questions = sum(count for _, _, count in sessions.values())
    return 60.0 * questions / seconds if seconds > 0 else math.nan


def summarize(paths: Iterable[str | Path]) -> list[EvalSummary]:
    """One summary per (run, benchmark) found in the results files."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for path in paths:
        for record in read_results(Path(path)):
            groups.setdefault((record["run"], record["benchmark"]), []).append(record)
    return [summarize_records(rs, run, bench) for (run, bench), rs in groups.items()]


TABLE_COLUMNS = (
    "benchmark",
    "run",
    "n",
    "EM [95% CI]",
    "F1 [95% CI]",
    "cover",
    "calls/q",
    "grammar err",
    "failed",
    "q/min",
)


def format_table(summaries: Sequence[EvalSummary]) -> str:
    """A plain-text table, one line per run and benchmark, sorted by benchmark then run."""
    rows = [list(TABLE_COLUMNS)]
    for s in sorted(summaries, key=lambda s: (s.benchmark, s.run)):
        rows.append(
            [
                s.benchmark,
                s.run,
                str(s.n),
                f"{s.em:.3f} [{s.em_ci[0]:.3f}, {s.em_ci[1]:.3f}]",
                f"{s.f1:.3f} [{s.f1_ci[0]:.3f}, {s.f1_ci[1]:.3f}]",
                f"{s.cover:.3f}",
                f"{s.tool_calls:.2f}",
                f"{s.grammar_error_rate:.1%}",
                f"{s.failed_share:.1%}",
                f"{s.questions_per_minute:.1f}",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


PLOT_PANELS = (
    ("EM", "em", "em_ci"),
    ("F1", "f1", "f1_ci"),
    ("tool calls per question", "tool_calls", None),
    ("grammar-error rate", "grammar_error_rate", None),
)


def plot_comparison(summaries: Sequence[EvalSummary], out_png: str | Path) -> Path:
    """Bars per run, grouped by benchmark, one panel per metric (EM/F1 with their 95% CI)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on evaluation machines
    import matplotlib.pyplot as plt

    if not summaries:
        raise ValueError("plot_comparison needs at least one summary")
    benchmarks = sorted({s.benchmark for s in summaries})
    runs = sorted({s.run for s in summaries})
    by_key = {(s.benchmark, s.run): s for s in summaries}
    width = 0.8 / len(runs)
    fig, axes = plt.subplots(1, len(PLOT_PANELS), figsize=(4.2 * len(PLOT_PANELS), 3.6))
    for ax, (title, attr, ci_attr) in zip(axes, PLOT_PANELS, strict=True):
        for k, run in enumerate(runs):
            xs: list[float] = []
            ys: list[float] = []
            errs: list[list[float]] = [[], []]
            for b, bench in enumerate(benchmarks):
                s = by_key.get((bench, run))
                if s is None:
                    continue
                value = float(getattr(s, attr))
                low, high = getattr(s, ci_attr) if ci_attr else (value, value)
                xs.append(b + (k - (len(runs) - 1) / 2) * width)
                ys.append(value)
                errs[0].append(max(0.0, value - low))
                errs[1].append(max(0.0, high - value))
            ax.bar(xs, ys, width, yerr=errs if ci_attr else None, capsize=3, label=run)
        ax.set_xticks(range(len(benchmarks)), benchmarks, rotation=15)
        ax.set_title(title)
        ax.set_ylim(0.0, 1.0 if attr != "tool_calls" else None)  # rates live in [0, 1]
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize="x-small")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
