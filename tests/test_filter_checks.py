"""Each filter check on its own, and math-verify on tricky equivalent answers."""

from __future__ import annotations

import pytest

from distill.config import FilterConfig
from distill.filter.checks import check_format, check_truncated
from distill.filter.stage import verdicts
from distill.teacher.backends.base import make_generation
from distill.records import Prompt, Sampling
from distill.verify.math import check_math, check_math_batch


def gen(completion: str, gold: str = "8", finish: str = "stop", pid: str = "p1", idx: int = 0) -> dict:
    prompt = Prompt(id=pid, problem="q", answer=gold)
    return make_generation(prompt, idx, completion, finish, prompt_tokens=3, completion_tokens=9, teacher="t",
                           sampling=Sampling()).to_dict()


GOOD = "7 + 1 = 8.\n</think>\n\nThe answer is \\boxed{8}."


def record(reasoning: str, answer: str, *, gold: str | None = "8", pid: str = "p1", idx: int = 0,
           problem: str = "Mia has 7 apples and buys 1 more. How many apples does Mia have?", domain: str = "math",
           source: str = "src", tokens: int = 9, finish: str = "stop", **extra) -> dict:
    """A Generation record as the generate stage writes it, plus any extra fields (tests, choices, fn_name)."""
    prompt = Prompt(id=pid, problem=problem, answer=gold, domain=domain, source=source)
    rec = make_generation(prompt, idx, f"{reasoning}\n</think>\n\n{answer}", finish, prompt_tokens=3,
                          completion_tokens=tokens, teacher="t", sampling=Sampling()).to_dict()
    rec.update(extra)
    return rec


@pytest.mark.parametrize("completion,reason", [
    (GOOD, None),
    ("7 + 1 = 8. The answer is \\boxed{8}.", "think_not_closed"),
    ("\n</think>\n\nThe answer is \\boxed{8}.", "empty_think"),
    ("7 + 1 = 8.\n</think>\n\n", "no_answer_after_think"),
    ("a</think>b<think>c</think>\\boxed{8}", "multiple_think_blocks"),
    (GOOD + "<｜end▁of▁sentence｜><｜User｜>And 9 + 1?", "chat_marker_in_text"),
    ("7 + 1 = 8.<｜end▁of▁sentence｜>\n</think>\n\n\\boxed{8}", "chat_marker_in_text"),
])
def test_format_check(completion, reason):
    assert check_format(gen(completion)) == reason


def test_prefill_is_restored_before_checking():
    g = gen(GOOD)
    assert g["completion"].startswith("<think>\n") and g["reasoning"] == "7 + 1 = 8." and "boxed{8}" in g["answer"]


def test_truncated_rejected_even_with_an_answer():
    assert check_truncated(gen(GOOD, finish="length")) == "truncated"
    assert check_truncated(gen(GOOD)) is None


@pytest.mark.parametrize("gold,answer", [
    ("\\frac{1}{2}", "so \\boxed{0.5}"),
    ("0.5", "\\boxed{\\dfrac12}"),
    ("2", "x = 2, so \\boxed{x=2}"),
    ("\\frac{\\pi}{2}", "\\boxed{\\pi/2}"),
    ("1,2", "\\boxed{\\{1,2\\}}"),
    ("50\\%", "\\boxed{0.5}"),
    ("8", "first 9, then corrected: \\boxed{8}"),
    ("\\sqrt{2}/2", "\\boxed{\\frac{\\sqrt{2}}{2}}"),
])
def test_equivalent_math_answers_accepted(gold, answer):
    v = check_math(gold, answer)
    assert v.correct, v


@pytest.mark.parametrize("gold,answer,reason", [
    ("8", "\\boxed{7}", "wrong_answer"),
    ("8", "I am not sure.", "unparsable_answer"),
    (None, "\\boxed{8}", "no_gold_answer"),
    ("\\frac{1}{3}", "\\boxed{0.33}", "wrong_answer"),
])
def test_wrong_or_missing_answers_rejected(gold, answer, reason):
    v = check_math(gold, answer)
    assert not v.correct and v.reason == reason


def test_batch_in_process_pool_matches_inline():
    pairs = [(str(i % 7), f"\\boxed{{{i % 5}}}") for i in range(200)]
    pooled = check_math_batch(pairs, workers=2)
    inline = check_math_batch(pairs, workers=1)
    assert [v.correct for v in pooled] == [v.correct for v in inline]
    assert sum(v.correct for v in pooled) == sum(1 for i in range(200) if i % 7 == i % 5)


def test_verdicts_keep_every_reason_and_drop_duplicates():
    gens = [gen(GOOD, idx=0), gen(GOOD, idx=1), gen(GOOD.replace("{8}", "{9}"), idx=2),
            gen(GOOD, finish="length", idx=3), gen("no think", idx=4)]
    out = list(verdicts(iter(gens), FilterConfig(workers=1)))
    assert [v["reject_reason"] for v in out] == [None, "duplicate", "wrong_answer", "truncated", "think_not_closed"]
    assert out[2]["checks"]["correctness"] == {"passed": False, "reason": "wrong_answer", "extracted": "9"}
    assert out[0]["kept"] and not out[1]["kept"]
