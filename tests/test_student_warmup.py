"""The recipe's training settings reach transformers with the meaning the recipe gives them."""

from __future__ import annotations

import math
import warnings

import pytest


@pytest.mark.parametrize("ratio", [0.0, 0.03, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("steps", [7, 200, 1500])
def test_warmup_ratio_is_that_fraction_of_the_run(tmp_path, ratio, steps):
    """transformers 5 reads ``warmup_steps`` below 1 as a ratio and from 1 up as steps: warmup_ratio 1.0 (allowed
    by the recipe) warmed up for 1 step instead of the whole run."""
    from transformers import AutoTokenizer

    from distill.student.miniature import tiny_student
    from distill.student.train import training_args
    from tests.conftest import TINY_TEACHER

    warnings.simplefilter("ignore")
    args = training_args(tiny_student(warmup_ratio=ratio, max_steps=steps), tmp_path, AutoTokenizer.from_pretrained(
        TINY_TEACHER))
    assert args.get_warmup_steps(steps) == math.ceil(ratio * steps)
