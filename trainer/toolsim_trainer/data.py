"""Question rows: the shared data sets (and any file with a question and an answer) in one shape.

Understood as they are: ``context/hotpotqa_train.json`` (supporting paragraphs from
``supporting_facts``), ``context/musique_train.json`` (``is_supporting`` paragraphs and
``answer_aliases``), ``eval/*.jsonl`` (``idx``/``question``/``answer``), and any JSON list or
JSONL file whose rows have ``question`` and ``answer`` or ``answers`` (optionally ``id`` and
``passages: [{title, text}]``). A bad row raises ``DatasetError`` naming file, line and field.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DatasetError(ValueError):
    """A data file or row that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Passage:
    title: str
    text: str


@dataclass(frozen=True)
class QuestionRow:
    """One question: gold answers (first = canonical, then aliases) and grounding passages."""

    id: str
    question: str
    answers: tuple[str, ...]
    passages: tuple[Passage, ...] = ()
    source: str = ""
    """``file:line`` the row came from."""
    subquestions: tuple[str, ...] = ()
    """Single-hop questions that answer it in order (MuSiQue's ``question_decomposition``), each
    standalone: a ``#k`` reference is replaced by the answer of step k. Empty when unknown."""

    @property
    def answer(self) -> str:
        return self.answers[0]


def load_rows(path: str | Path, limit: int | None = None) -> list[QuestionRow]:
    """Every row of ``path`` (JSON list or JSONL), in file order, at most ``limit``."""
    path = Path(path)
    rows: list[QuestionRow] = []
    seen: set[str] = set()
    for line, raw in _records(path):
        row = _row(raw, f"{path}:{line}")
        if row.id in seen:
            raise DatasetError(f"{path}:{line}: duplicate id {row.id!r}")
        seen.add(row.id)
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return rows


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed row); a JSON list's rows are numbered from 1 by position."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    text = path.read_text("utf-8")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise DatasetError(f"{path}: not valid JSON: {exc}") from exc
        yield from enumerate(data, start=1)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except ValueError as exc:
            raise DatasetError(f"{path}:{number}: not valid JSON: {exc}") from exc


def _row(raw: Any, where: str) -> QuestionRow:
    if not isinstance(raw, dict):
        raise DatasetError(f"{where}: a row must be a JSON object")
    question = raw.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DatasetError(f"{where}: missing field 'question' (a non-empty string)")
    answers = _answers(raw, where)
    ident = raw.get("id", raw.get("_id", raw.get("idx")))
    if ident is None:
        ident = hashlib.sha256(question.encode()).hexdigest()[:16]
    return QuestionRow(
        id=str(ident),
        question=question.strip(),
        answers=answers,
        passages=_passages(raw, where),
        source=where,
        subquestions=_subquestions(raw, where),
    )


def _answers(raw: dict[str, Any], where: str) -> tuple[str, ...]:
    value = raw.get("answers", raw.get("answer"))
    if value is None:
        raise DatasetError(f"{where}: missing field 'answer' (or 'answers')")
    found = [value] if isinstance(value, str) else value
    aliases = raw.get("answer_aliases") or []
    if not isinstance(found, list) or not isinstance(aliases, list):
        raise DatasetError(f"{where}: 'answer' must be a string or a list of strings")
    answers = [str(a).strip() for a in [*found, *aliases] if str(a).strip()]
    if not answers:
        raise DatasetError(f"{where}: field 'answer' is empty")
    return tuple(dict.fromkeys(answers))


def _passages(raw: dict[str, Any], where: str) -> tuple[Passage, ...]:
    if "passages" in raw:
        return tuple(_passage(p, where) for p in raw["passages"])
    if "supporting_facts" in raw and "context" in raw:  # HotpotQA
        titles = {fact[0] for fact in raw["supporting_facts"]}
        return tuple(
            Passage(title, "".join(sentences).strip())
            for title, sentences in raw["context"]
            if title in titles
        )
    if "paragraphs" in raw:  # MuSiQue
        return tuple(
            Passage(p.get("title", ""), p["paragraph_text"])
            for p in raw["paragraphs"]
            if p.get("is_supporting")
        )
    return ()


def _subquestions(raw: dict[str, Any], where: str) -> tuple[str, ...]:
    """MuSiQue's decomposition as standalone questions ("#1" → the first step's answer)."""
    steps = raw.get("question_decomposition") or []
    if not isinstance(steps, list):
        raise DatasetError(f"{where}: 'question_decomposition' must be a list of steps")
    out: list[str] = []
    answers: list[str] = []
    for k, step in enumerate(steps, start=1):
        if not isinstance(step, dict) or not isinstance(step.get("question"), str):
            raise DatasetError(f"{where}: question_decomposition[{k - 1}] needs a 'question'")
        question = step["question"]
        # Highest reference first, so "#1" does not eat the front of "#10".
        for ref in range(len(answers), 0, -1):
            question = question.replace(f"#{ref}", answers[ref - 1])
        out.append(" ".join(question.split()))
        answers.append(str(step.get("answer", "")).strip())
    return tuple(out)


def _passage(raw: Any, where: str) -> Passage:
    if not isinstance(raw, dict) or not isinstance(raw.get("text"), str):
        raise DatasetError(f"{where}: each passage needs a string 'text'")
    return Passage(str(raw.get("title", "")), raw["text"])


def split_rows(
    rows: Sequence[QuestionRow], val_fraction: float, seed: int
) -> tuple[list[QuestionRow], list[QuestionRow]]:
    """(train, validation): a seeded shuffle, so the split is fixed before anything is generated."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = list(rows)
    random.Random(seed).shuffle(order)
    n_val = round(len(order) * val_fraction)
    return order[n_val:], order[:n_val]


def grounding_of(row: QuestionRow) -> dict[str, Any] | None:
    """The ToolActor episode grounding for ``row``, or None when it has no passages."""
    if not row.passages:
        return None
    grounding: dict[str, Any] = {
        "question": row.question,
        "answer": row.answer,
        "passages": [{"title": p.title, "text": p.text} for p in row.passages],
    }
    if len(row.answers) > 1:  # MuSiQue aliases count as evidence too
        grounding["aliases"] = list(row.answers[1:])
    return grounding
