"""SQuAD-style F1/EM (protocol.md §7) on hand-made cases whose values are worked out by hand."""

from __future__ import annotations

import pytest

from curvzo.metrics import exact_match, f1_score, normalize_answer


@pytest.mark.parametrize("text, expected", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  an  apple, a pear and the plum ", "apple pear and plum"),
    ("Theatre anthem", "theatre anthem"),  # articles only as whole words
    ("U.S.A.", "usa"),                     # punctuation removed before articles and whitespace
    ("a-the", "athe"),                     # the hyphen goes first, so no article is left standing alone
    ("\tNew\nYork ", "new york"),
])
def test_normalisation(text, expected):
    assert normalize_answer(text) == expected


def test_f1_overlap_precision_recall():
    # prediction tokens {denver, broncos, won}, gold {denver, broncos}: P = 2/3, R = 1, F1 = 0.8
    assert f1_score("Denver Broncos won", ["the Denver Broncos"]) == pytest.approx(0.8)
    # repeated tokens count as a multiset: pred {a1 a1 b}, gold {a1 b b}: overlap 2, P = R = 2/3
    assert f1_score("x x y", ["x y y"]) == pytest.approx(2 / 3)


def test_f1_and_em_take_the_best_gold_answer():
    golds = ["Carolina Panthers", "the Panthers", "Panthers"]
    assert f1_score("Panthers.", golds) == pytest.approx(1.0)
    assert exact_match("Panthers.", golds) == 1.0
    assert exact_match("The Carolina Panthers!", golds) == 1.0
    assert exact_match("Carolina", golds) == 0.0
    assert f1_score("Carolina", golds) == pytest.approx(2 * 1 * 0.5 / 1.5)  # P 1, R 1/2


def test_no_overlap_and_empty_predictions_score_zero():
    assert f1_score("Seattle", ["Denver"]) == 0.0
    assert f1_score("", ["Denver"]) == 0.0
    assert f1_score("the", ["a"]) == 0.0  # both normalise to nothing: MeZO scores it 0
    assert exact_match("the", ["a"]) == 1.0  # but the normalised strings are equal


def test_unanswerable_gold_is_scored_by_exact_match():
    assert f1_score("no answer", ["no answer"]) == 1.0
    assert f1_score("no", ["no answer"]) == 0.0  # partial overlap earns nothing here
    assert f1_score("CANNOTANSWER", ["CANNOTANSWER"]) == 1.0


def test_empty_gold_list_is_an_error():
    with pytest.raises(ValueError):
        f1_score("x", [])
    with pytest.raises(ValueError):
        exact_match("x", [])
