"""Answer normalisation, exact match and token F1, as the SQuAD/HotpotQA evaluation scripts.

One definition of "the same answer" for everything that needs it: the ToolActor's fidelity
check (does an observation carry the gold answer?), the trainer's rewards and ``toolsim eval``.
A policy is then trained on, and a simulator is checked against, the notion of "correct" that
the policy is measured by.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
YES_NO = frozenset({"yes", "no"})
"""Normalised answers that no passage states verbatim (comparison questions)."""


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse whitespace."""
    lowered = text.lower()
    no_punct = "".join(ch for ch in lowered if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", no_punct).split())


def exact_match(prediction: str | None, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def f1_score(prediction: str | None, golds: Sequence[str]) -> float:
    """The best token F1 of the prediction against any gold answer."""
    if prediction is None or not golds:
        return 0.0
    return max(_f1(prediction, gold) for gold in golds)


def _f1(prediction: str, gold: str) -> float:
    pred_norm, gold_norm = normalize_answer(prediction), normalize_answer(gold)
    # As in the HotpotQA script: yes/no/noanswer only match themselves exactly.
    special = {"yes", "no", "noanswer"}
    if (pred_norm in special or gold_norm in special) and pred_norm != gold_norm:
        return 0.0
    pred_tokens, gold_tokens = pred_norm.split(), gold_norm.split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def answer_in_text(golds: Sequence[str], text: str) -> bool:
    """Whether any gold answer occurs in ``text`` as whole normalised tokens.

    Unlike ``normalize_answer`` (which deletes punctuation, as the SQuAD script does for
    answers), punctuation here separates tokens on both sides, so JSON or prose around the
    answer never glues onto it: ``{"city":"Paris"}`` contains ``Paris``."""
    haystack = f" {_spaced(text)} "
    return any((needle := _spaced(g)) and f" {needle} " in haystack for g in golds)


def _spaced(text: str) -> str:
    spaced = "".join(" " if ch in _PUNCTUATION else ch for ch in text.lower())
    return " ".join(_ARTICLES.sub(" ", spaced).split())


def is_yes_no(golds: Sequence[str]) -> bool:
    """Whether the answer is yes/no: evidence for it is never the word itself."""
    return bool(golds) and all(normalize_answer(g) in YES_NO for g in golds)
