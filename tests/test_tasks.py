"""The synthetic task: deterministic, exactly checkable, and train / held-out never overlap."""

from distill.tasks.arithmetic import make_examples, make_problems, parse_problem, reference_solution, split_of
from distill.verify.math import check_math


def test_splits_never_overlap():
    train = make_problems("train", 3000, seed=0)
    heldout = make_problems("heldout", 600, seed=0)
    assert {p.problem for p in train}.isdisjoint({p.problem for p in heldout})
    # Not even the arithmetic is shared (names and items do not matter).
    assert {parse_problem(p.problem) for p in train}.isdisjoint({parse_problem(p.problem) for p in heldout})
    assert all(split_of(parse_problem(p.problem)) == "heldout" for p in heldout)


def test_deterministic_and_unique_ids():
    a, b = make_problems("train", 200, seed=3), make_problems("train", 200, seed=3)
    assert [p.to_dict() for p in a] == [p.to_dict() for p in b]
    assert len({p.id for p in a}) == 200


def test_reference_solution_is_correct():
    for prompt, reasoning, answer in make_examples("heldout", 50, seed=1):
        assert reasoning and "\\boxed{" in answer
        assert check_math(prompt.answer, answer).correct
        assert reference_solution(prompt) == (reasoning, answer)
