"""Answer normalisation, EM and token F1 against cases worked through the official scripts.

The expected values follow the SQuAD v1.1 ``evaluate-v1.1.py`` (``normalize_answer``,
``exact_match_score``, ``f1_score``, max over ground truths) and the HotpotQA
``hotpot_evaluate_v1.py`` rule that yes/no/noanswer only ever match themselves.
"""

from __future__ import annotations

import pytest

from toolsim_trainer.answers import answer_in_text, exact_match, f1_score, normalize_answer


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("The Eiffel Tower", "eiffel tower"),  # lowercase, article dropped
        ("  An apple a   day ", "apple day"),  # every article, whitespace collapsed
        ("theatre anthem", "theatre anthem"),  # articles only as whole words
        ("A.B.C.", "abc"),  # punctuation removed, not replaced by a space
        ("Jean-Paul Sartre!", "jeanpaul sartre"),
        ("1,000", "1000"),
        ("the the", ""),
        ("Saint-Étienne", "saintétienne"),  # non-ASCII letters stay
        ("“quoted”", "“quoted”"),  # string.punctuation is ASCII only, as in the script
        ("Tab\tand\nnewline", "tab and newline"),
    ],
)
def test_normalize_answer_matches_the_squad_script(text: str, normalised: str) -> None:
    assert normalize_answer(text) == normalised


@pytest.mark.parametrize(
    ("prediction", "golds", "em"),
    [
        ("Denver Broncos", ["Denver Broncos", "Denver Broncos", "Denver Broncos"], 1.0),
        ("the Denver Broncos.", ["Denver Broncos"], 1.0),
        ("Broncos", ["Denver Broncos"], 0.0),
        ("Obama", ["Barack Obama", "obama"], 1.0),  # any gold answer counts
        ("Yes.", ["yes"], 1.0),
        ("no", ["yes"], 0.0),
        (None, ["anything"], 0.0),  # no prediction scores zero
        ("Paris", [], 0.0),
    ],
)
def test_exact_match(prediction: str | None, golds: list[str], em: float) -> None:
    assert exact_match(prediction, golds) == em


@pytest.mark.parametrize(
    ("prediction", "golds", "f1"),
    [
        # P = 2/2, R = 2/4 ("the" is dropped from both)
        ("the cat sat", ["cat sat on the mat"], 2 * 1.0 * 0.5 / 1.5),
        # repeated tokens count once each: common = {cat: 1, dog: 1}
        ("cat cat dog", ["cat dog dog"], 2 / 3),
        ("Barack Obama", ["Obama", "President Barack Hussein Obama"], 2 * 0.5 * 1.0 / 1.5),
        ("Obama", ["Barack Obama", "Obama"], 1.0),  # the best gold answer
        ("Denver", ["Seattle"], 0.0),
        ("...", ["anything"], 0.0),  # nothing left after normalisation
        (None, ["anything"], 0.0),
        # HotpotQA: yes/no/noanswer match only themselves, even with overlapping tokens
        ("yes", ["yes it is"], 0.0),
        ("yes sir", ["yes"], 0.0),
        ("noanswer", ["no answer"], 0.0),
        ("Yes!", ["yes"], 1.0),
        ("no", ["no", "yes"], 1.0),
    ],
)
def test_f1_score(prediction: str | None, golds: list[str], f1: float) -> None:
    assert f1_score(prediction, golds) == pytest.approx(f1)


def test_f1_takes_the_max_over_golds_not_the_mean() -> None:
    golds = ["Zhao Kuangyin", "Zhao Hongyin", "Hongyin"]
    assert f1_score("Zhao Hongyin", golds) == 1.0
    assert exact_match("zhao hongyin", golds) == 1.0


@pytest.mark.parametrize(
    ("golds", "text", "found"),
    [
        (["Paris"], "The capital of France is Paris.", True),
        (["Paris"], "A Parisian café.", False),  # whole tokens only
        (["3 November 1929", "1929"], "He died in 1929, in Warsaw", True),
        (["New York City"], "new  york city!", True),
        (["the"], "the end", False),  # a gold that normalises to nothing never matches
        (["Paris"], '{"city":"Paris","note":"ok"}', True),  # JSON punctuation separates
        (["U.S. Navy"], "served in the U.S. Navy.", True),
        (["O'Neil"], "Shaquille O'Neil scored", True),
        (["Paris"], '{"city":"Parisville"}', False),
    ],
)
def test_answer_in_text(golds: list[str], text: str, found: bool) -> None:
    assert answer_in_text(golds, text) is found
