"""Answer verification: pathological math answers end in "timeout" (never a stall), the guarded pool survives
hung and crashing workers, multiple-choice letters, and code samples run in the real sandbox."""

from __future__ import annotations

import os
import time

import pytest

from distill.config import CodeCheckConfig, FilterConfig
from distill.filter.pool import GuardedPool
from distill.filter.stage import verdicts
from distill.verify.choice import check_choice, extract_choice, gold_letter
from distill.verify.math import check_math, check_math_batch
from tests.test_filter_checks import record


def nested(depth: int, inner: str) -> str:
    return "\\boxed{" + "\\frac{1}{" * depth + inner + "}" * depth + "}"


# Distinct expressions per test: sympy's caches are inherited by forked workers, so an expression half-computed
# by one test could finish quickly in the next.
PATHOLOGICAL = ["\\boxed{9^{9^{9^{8}}}}", nested(500, "3"), "\\boxed{(10^{8})!}",
                "\\boxed{99999999999^{99999999999}}"]


@pytest.mark.parametrize("answer", ["\\boxed{9^{9^{9^{9}}}}", nested(300, "2")])
def test_pathological_answer_times_out_via_math_verify_alarm(answer):
    start = time.monotonic()
    v = check_math("1", answer, timeout_s=1)
    # Never a stall and never accepted; on a loaded machine sympy's caches can make the nested fraction finish
    # (as a wrong answer) before the alarm, which is the same outcome for the filter.
    assert not v.correct and v.reason in ("timeout", "wrong_answer")
    assert time.monotonic() - start < 10


def test_hard_guard_kills_workers_stuck_past_the_deadline():
    """The alarm is set far beyond the hard deadline, so only the kill-and-replace guard can end these items;
    the good answers around them are still verified, in order."""
    pairs = []
    never_finishing = [p for p in PATHOLOGICAL if "frac" not in p]  # deep fractions can finish within 4 s
    for bad in never_finishing:
        pairs += [("1", "\\boxed{1}"), ("1", bad)]
    start = time.monotonic()
    out = check_math_batch(pairs, workers=2, timeout_s=60, hard_timeout_s=4.0)
    took = time.monotonic() - start
    assert [v.reason for v in out] == [None, "timeout"] * len(never_finishing)
    assert took < 60, took


def _sleepy(x):
    if x == "hang":
        time.sleep(3600)
    if x == "die":
        os._exit(3)
    if x == "raise":
        raise ValueError("boom")
    return x * 2


def test_guarded_pool_order_passthrough_hang_crash_and_errors():
    with GuardedPool(_sleepy, workers=2, hard_timeout_s=1.0, on_fail=lambda item, why: why, chunk=2) as pool:
        items = [1, None, "hang", 2, "die", 3, "raise", 4] + list(range(5, 40))
        out = list(pool.imap((i, it) for i, it in enumerate(items)))
        assert [ctx for ctx, _ in out] == list(range(len(items)))
        got = [r for _, r in out]
        assert got[:8] == [2, None, "timeout", 4, "crashed", 6, "error: ValueError: boom", 8]
        assert got[8:] == [i * 2 for i in range(5, 40)]
        assert pool.killed == 2
        assert pool.map([10, 11]) == [20, 22]  # the replaced workers keep serving


def _pid_after_work(x):
    sum(i * i for i in range(2000 + x % 7 * 500))  # uneven work, so the two workers drift apart
    return os.getpid()


def test_consecutive_items_stay_together_in_whole_chunks():
    """Workers are refilled a whole chunk at a time: a prompt's samples (consecutive items, often the same answer
    text) land in one worker, where math-verify's parse cache hits, instead of being dealt out one by one."""
    with GuardedPool(_pid_after_work, workers=2, hard_timeout_s=30, on_fail=lambda item, why: why, chunk=8,
                     queue_per_worker=32) as pool:
        pids = pool.map(range(4000))
    assert len(set(pids)) == 2
    for start in range(0, 4000, 8):
        assert len(set(pids[start:start + 8])) == 1, start


def test_imap_pulls_its_input_lazily_within_the_window():
    """Bounded memory: the pool never reads more than ``window`` items ahead of what has been consumed."""
    pulled = []

    def source():
        for i in range(100_000):
            pulled.append(i)
            yield i, i

    with GuardedPool(_sleepy, workers=2, hard_timeout_s=30, on_fail=lambda item, why: why,
                     queue_per_worker=8) as pool:
        it = pool.imap(source())
        assert next(it) == (0, 0)
        assert len(pulled) <= pool.window + 1
        for _ in range(500):
            ctx, res = next(it)
            assert res == ctx * 2
        assert len(pulled) <= 501 + pool.window


def test_big_items_do_not_block_the_parent_behind_a_hung_worker():
    """Items larger than a pipe's buffer are only sent to idle workers, so a hung worker cannot stall the parent
    in a write and its deadline is still enforced."""
    big = "x" * 3_000_000
    with GuardedPool(_sleepy, workers=1, hard_timeout_s=1.0, on_fail=lambda item, why: why) as pool:
        start = time.monotonic()
        out = pool.map(["hang", big, big])
        assert out[0] == "timeout" and out[1] == out[2] == big * 2
        assert time.monotonic() - start < 15


def test_pathological_answers_inside_the_filter_become_timeout_rejections():
    cfg = FilterConfig(workers=2, verify_timeout_s=60, verify_hard_timeout_s=1.0)
    recs = [record("Compute.", "\\boxed{7^{7^{7^{7}}}}", gold="1", idx=0),
            record("Compute.", "\\boxed{8}", idx=1, pid="p2", problem="What is 7 + 1?")]
    out = list(verdicts(iter(recs), cfg))
    assert out[0]["reject_reason"] == "timeout" and out[0]["checks"]["language"]["passed"]
    assert out[1]["kept"]


@pytest.mark.parametrize("text,letter", [
    ("So the final answer is \\boxed{C}.", "C"),
    ("\\boxed{\\text{(B)}}", "B"),
    ("\\boxed{D. 42}", "D"),
    ("Answer: C", "C"),
    ("Option A looks tempting, but the answer is (D).", "D"),
    ("the answer is B", "B"),
    ("The correct option is **A**", "A"),
    ("I pick (C) after ruling out (A).", "A"),
    ("first \\boxed{A}, on reflection \\boxed{B}", "B"),
    ("The answer is a prime number.", None),
    ("The answer is Clearly 42.", None),
    ("the answer is E", None),  # four choices: only A-D exist
])
def test_choice_letter_extraction(text, letter):
    assert extract_choice(text, "ABCD") == letter


def test_choice_gold_as_letter_or_text():
    choices = ["12", "14", "16", "18"]
    assert gold_letter("(C)", choices) == "C"
    assert gold_letter("16", choices) == "C"
    assert gold_letter(None, choices) is None
    assert check_choice("C", "\\boxed{C}", choices).correct
    assert check_choice("16", "Answer: C", choices).correct
    assert check_choice("C", "Answer: B", choices).reason == "wrong_answer"
    assert check_choice("C", "no idea", choices).reason == "unparsable_answer"
    assert check_choice(None, "\\boxed{C}", choices).reason == "no_gold_answer"


def test_choice_records_go_through_the_letter_check():
    choices = ["12", "14", "16", "18"]
    recs = [record("Reason.", "The answer is \\boxed{C}.", gold="C", choices=choices, domain="choice"),
            record("Reason.", "The answer is (A).", gold="16", choices=choices, idx=1),
            record("Reason.", "The answer is (A).", gold=None, choices=choices, idx=2)]
    out = list(verdicts(iter(recs), FilterConfig(workers=1)))
    assert [v["reject_reason"] for v in out] == [None, "wrong_answer", "no_gold_answer"]
    assert out[0]["checks"]["correctness"]["extracted"] == "C"


SOLUTION = "Read, add, print.\n\n```python\na, b = map(int, input().split())\nprint(a + b)\n```"
WRONG = "```python\na, b = map(int, input().split())\nprint(a - b)\n```"
TESTS = {"inputs": ["1 2\n", "5 5\n", "0 0\n"], "outputs": ["3\n", "10\n", "0\n"]}


def test_code_samples_run_against_their_tests():
    cfg = FilterConfig(workers=1, code=CodeCheckConfig(threshold=0.5, workers=2))
    recs = [record("Plan.", SOLUTION, domain="code", tests=TESTS, gold=None, idx=0),
            record("Plan.", WRONG, domain="code", tests=TESTS, gold=None, idx=1),
            record("Plan.", SOLUTION, domain="code", gold=None, idx=2),
            record("Plan.", "I would write a loop.", domain="code", tests=TESTS, gold=None, idx=3),
            record("Plan.", "```python\ndef add(a, b):\n    return a + b\n```", domain="code", gold=None, idx=4,
                   tests=[{"input": "1\n2", "output": "3", "testtype": "functional"}], fn_name="add")]
    out = list(verdicts(iter(recs), cfg))
    assert [v["reject_reason"] for v in out] == [None, "tests_failed", "no_tests", "no_code_block", None]
    assert out[0]["checks"]["correctness"]["pass_rate"] == 1.0
    # a - b passes only "0 0": 1/3 < 0.5
    assert out[1]["checks"]["correctness"]["pass_rate"] == pytest.approx(0.3333, abs=1e-3)
    assert out[1]["checks"]["correctness"]["detail"] == "wrong_answer"
    # Code blocks are the point of code reasoning: the quality filter leaves them alone there.
    assert out[0]["checks"]["code_blocks"]["passed"]


def test_code_threshold_below_one_keeps_partial_solutions():
    half = "```python\na, b = map(int, input().split())\nprint(a + b if a < 3 else 0)\n```"
    cfg = FilterConfig(workers=1, code=CodeCheckConfig(threshold=0.3, workers=1))
    (v,) = verdicts(iter([record("Plan.", half, domain="code", tests=TESTS, gold=None)]), cfg)
    assert v["kept"] and v["checks"]["correctness"]["pass_rate"] == pytest.approx(0.6667, abs=1e-3)
