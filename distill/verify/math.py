"""Math answers checked with math-verify, in worker processes.

math-verify bounds parsing and comparison with ``signal.alarm``, which only works in a process's main thread
(REFERENCE.md pitfall 6), so batches run in a process pool (or inline in the main thread for small batches),
never in threads. The boxed answer is preferred, as the R1 protocol asks for ``\\boxed{}``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

ANSWER_CONFIG = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
INLINE_BELOW = 64


@dataclass
class MathVerdict:
    correct: bool
    reason: str | None  # None when correct; "no_gold_answer", "unparsable_answer", "wrong_answer", "timeout"
    extracted: str | None


def _gold_text(gold: str) -> str:
    gold = gold.strip()
    return gold if ("$" in gold or "\\boxed" in gold) else f"${gold}$"


def extract_answer(answer_text: str, timeout_s: int = 5) -> str | None:
    """The model's final answer as a canonical string (for majority voting), or None."""
    parsed = parse(answer_text, extraction_config=ANSWER_CONFIG, parsing_timeout=timeout_s)
    return str(parsed[0]) if parsed else None


def check_math(gold: str | None, answer_text: str, timeout_s: int = 5) -> MathVerdict:
    if gold is None or str(gold).strip() == "":
        return MathVerdict(False, "no_gold_answer", None)
    try:
        gold_parsed = parse(_gold_text(str(gold)), parsing_timeout=timeout_s, raise_on_error=True)
        pred = parse(answer_text, extraction_config=ANSWER_CONFIG, parsing_timeout=timeout_s, raise_on_error=True)
    except TimeoutError:
        return MathVerdict(False, "timeout", None)
    except Exception:  # noqa: BLE001 - a parser crash on model output is a rejection, not a pipeline failure
        return MathVerdict(False, "unparsable_answer", None)
    if not pred:
        return MathVerdict(False, "unparsable_answer", None)
    extracted = str(pred[0])
    if not gold_parsed:
        return MathVerdict(False, "no_gold_answer", extracted)
    try:
        ok = verify(gold_parsed, pred, timeout_seconds=timeout_s, raise_on_error=True)
    except TimeoutError:
        return MathVerdict(False, "timeout", extracted)
    except Exception:  # noqa: BLE001
        ok = False
    return MathVerdict(ok, None if ok else "wrong_answer", extracted)


def _check_pair(args: tuple[str | None, str, int]) -> MathVerdict:
    return check_math(*args)


def check_math_batch(pairs: list[tuple[str | None, str]], workers: int = 0, timeout_s: int = 5) -> list[MathVerdict]:
    """Verify (gold, answer_text) pairs; ``workers`` 0 means one process per core."""
    jobs = [(g, a, timeout_s) for g, a in pairs]
    workers = workers or os.cpu_count() or 1
    if len(jobs) < INLINE_BELOW or workers == 1:
        return [_check_pair(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as pool:
        return list(pool.map(_check_pair, jobs, chunksize=max(1, len(jobs) // (workers * 8))))
