"""Math answers checked with math-verify, in guarded worker processes.

math-verify bounds parsing and comparison with ``signal.alarm``, which only works in a process's main thread
(REFERENCE.md pitfall 6), so batches run in worker processes, never in threads. An alarm cannot interrupt a long C
call (a huge integer power, a deep recursive parse), so every item also has a hard deadline enforced from outside:
a worker past it is killed and replaced (``distill.filter.pool.GuardedPool``) and the item's verdict is
``timeout``. The boxed answer is preferred, as the R1 protocol asks for ``\\boxed{}``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException

ANSWER_CONFIG = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
# math-verify's alarm covers each of parse(gold), parse(answer) and verify: three alarms, plus slack.
HARD_TIMEOUT_FACTOR, HARD_TIMEOUT_SLACK_S = 3, 5


@dataclass
class MathVerdict:
    correct: bool
    # None when correct; "no_gold_answer", "unparsable_answer", "wrong_answer", "timeout", "verifier_error"
    reason: str | None
    extracted: str | None


def default_hard_timeout(timeout_s: int) -> float:
    return HARD_TIMEOUT_FACTOR * timeout_s + HARD_TIMEOUT_SLACK_S


def _gold_text(gold: str) -> str:
    gold = gold.strip()
    return gold if ("$" in gold or "\\boxed" in gold) else f"${gold}$"


def extract_answer(answer_text: str, timeout_s: int = 5) -> str | None:
    """The model's final answer as a canonical string (for majority voting), or None."""
    try:
        parsed = parse(answer_text, extraction_config=ANSWER_CONFIG, parsing_timeout=timeout_s)
    except TimeoutException:
        return None
    return str(parsed[0]) if parsed else None


def check_math(gold: str | None, answer_text: str, timeout_s: int = 5) -> MathVerdict:
    """One (gold, answer) pair. Never raises for bad model output: every failure is a verdict with a reason.
    (math-verify's ``TimeoutException`` derives from BaseException, hence the explicit catches.)"""
    if gold is None or str(gold).strip() == "":
        return MathVerdict(False, "no_gold_answer", None)
    timeout_s = max(1, int(timeout_s))
    try:
        gold_parsed = parse(_gold_text(str(gold)), parsing_timeout=timeout_s, raise_on_error=True)
        pred = parse(answer_text, extraction_config=ANSWER_CONFIG, parsing_timeout=timeout_s, raise_on_error=True)
    except (TimeoutError, TimeoutException):
        return MathVerdict(False, "timeout", None)
    except MemoryError:  # the worker's address-space cap: an answer too big to hold
        return MathVerdict(False, "verifier_error", None)
    except Exception:  # noqa: BLE001 - a parser crash on model output is a rejection, not a pipeline failure
        return MathVerdict(False, "unparsable_answer", None)
    if not pred:
        return MathVerdict(False, "unparsable_answer", None)
    extracted = str(pred[0])
    if not gold_parsed:
        return MathVerdict(False, "no_gold_answer", extracted)
    try:
        ok = verify(gold_parsed, pred, timeout_seconds=timeout_s, raise_on_error=True)
    except (TimeoutError, TimeoutException):
        return MathVerdict(False, "timeout", extracted)
    except MemoryError:
        return MathVerdict(False, "verifier_error", extracted)
    except Exception:  # noqa: BLE001
        ok = False
    return MathVerdict(ok, None if ok else "wrong_answer", extracted)


# One of each path math-verify takes (numbers, fractions, radicals, pi, intervals, symbolic simplify): the first
# use of each imports parts of sympy (sympy.physics alone ~0.3 s), which then happens once, before the fork.
WARM_UP_PAIRS = (("1/2", "\\boxed{\\frac{1}{2}}"), ("3\\sqrt{2}", "\\boxed{\\sqrt{18}}"),
                 ("\\frac{\\pi}{3}", "\\boxed{\\pi/3}"), ("(2, 5]", "\\boxed{(2,5]}"),
                 ("x^2+2x+1", "\\boxed{(x+1)^2}"), ("0.25", "The answer is $25\\%$"))


def warm_up() -> None:
    """Build math-verify's lazy parsers in this process, so that workers forked from it (and every replacement
    of a killed one) start warm instead of paying for it on their first answer, inside its deadline."""
    for gold, answer in WARM_UP_PAIRS:
        check_math(gold, answer)


def _check_pair(args: tuple[str | None, str, int]) -> MathVerdict:
    return check_math(*args)


def _failed_pair(args: tuple[str | None, str, int], why: str) -> MathVerdict:
    return MathVerdict(False, "timeout" if why == "timeout" else "verifier_error", None)


def check_math_batch(pairs: list[tuple[str | None, str]], workers: int = 0, timeout_s: int = 5,
                     hard_timeout_s: float | None = None, inline: bool = False,
                     memory_mb: int | None = None) -> list[MathVerdict]:
    """Verify (gold, answer_text) pairs in ``workers`` guarded processes (0 = one per core).

    ``inline=True`` runs in this process without the hard guard (a baseline for benchmarks; do not use it on
    untrusted answers)."""
    jobs = [(g, a, timeout_s) for g, a in pairs]
    if inline:
        return [_check_pair(j) for j in jobs]
    if not jobs:
        return []
    from distill.filter.pool import GuardedPool

    workers = min(workers or os.cpu_count() or 1, len(jobs))
    warm_up()
    with GuardedPool(_check_pair, workers=workers, on_fail=_failed_pair, memory_mb=memory_mb,
                     hard_timeout_s=hard_timeout_s or default_hard_timeout(timeout_s)) as pool:
        return pool.map(jobs)
