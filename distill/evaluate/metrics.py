"""The R1 paper's metrics.

- pass@1: mean correctness over the k samples of each problem, averaged over problems.
- cons@k: majority vote over the k extracted answers; the problem counts as solved when the most common answer is
  correct (ties broken by first occurrence).
- pass@k (unbiased, Chen et al. 2021): 1 - C(n - c, k) / C(n, k) for n samples with c correct.
"""

from __future__ import annotations

from collections import Counter
from math import comb
from typing import Iterable


def pass_at_k(n: int, c: int, k: int) -> float:
    if k > n:
        raise ValueError(f"k={k} exceeds the {n} samples")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_correct(samples: Iterable[tuple[str | None, bool]]) -> bool:
    """``samples``: (extracted answer, correct) pairs of one problem. Unparsable answers do not vote."""
    samples = list(samples)
    votes = Counter(a for a, _ in samples if a is not None)
    if not votes:
        return False
    top = votes.most_common(1)[0][0]
    return next(ok for a, ok in samples if a == top)


def summarise(per_problem: dict[str, list[tuple[str | None, bool]]], k: int) -> dict[str, float]:
    """Scores in percent, as the R1 tables print them."""
    if not per_problem:
        return {"problems": 0}
    n_problems = len(per_problem)
    p1 = sum(sum(ok for _, ok in s) / len(s) for s in per_problem.values()) / n_problems
    cons = sum(majority_correct(s) for s in per_problem.values()) / n_problems
    pk = sum(pass_at_k(len(s), sum(ok for _, ok in s), k) for s in per_problem.values()) / n_problems
    return {"problems": n_problems, "k": k, "pass@1": round(100 * p1, 2), f"cons@{k}": round(100 * cons, 2),
            f"pass@{k}": round(100 * pk, 2)}
