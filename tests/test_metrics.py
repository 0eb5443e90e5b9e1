"""The R1 metrics: pass@1 as the mean over k samples, cons@k by majority vote, unbiased pass@k."""

from math import comb

import pytest

from distill.evaluate.metrics import majority_correct, pass_at_k, summarise


def test_pass_at_k_matches_the_formula():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - comb(7, 5) / comb(10, 5))
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 3, 2) == 1.0


def test_majority_vote_ignores_unparsable_and_uses_the_top_answer():
    assert majority_correct([("5", True), ("4", False), ("5", True), (None, False)])
    assert not majority_correct([("4", False), ("4", False), ("5", True)])
    assert not majority_correct([(None, False), (None, False)])


def test_summarise_in_percent():
    res = summarise({"a": [("1", True), ("2", False)], "b": [("3", False), ("3", False)]}, k=2)
    assert res["pass@1"] == 25.0 and res["cons@2"] == 50.0 and res["pass@2"] == 50.0 and res["problems"] == 2
