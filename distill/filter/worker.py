"""The per-sample work done in the verifier processes: quality checks on the reasoning, then answer correctness
for math (math-verify) and multiple choice. Code answers are run by the parent in the sandbox instead (the sandbox
manages its own processes).

Why the quality checks run here too: they are the other CPU-heavy part of filtering (regex passes over tens of
kilobytes per sample); done in the parent they would leave the workers waiting on one core. A job is a small dict
(only the fields these checks read), and the result maps check name -> {"passed", "reason", ...} in report order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..verify.choice import check_choice
from ..verify.math import check_math
from .quality import QualityParams, quality_checks


@dataclass(frozen=True)
class WorkerParams:
    quality: QualityParams | None   # None: no quality checks
    math_timeout_s: int = 5


def answer_kind(rec: dict[str, Any]) -> str:
    """``code``, ``choice`` or ``math`` (anything else with a free-form answer goes to math-verify)."""
    domain = rec.get("domain") or "math"
    if domain == "code":
        return "code"
    if domain == "choice" or rec.get("choices"):
        return "choice"
    return "math"


def make_job(rec: dict[str, Any], *, quality: bool, answer: bool) -> dict[str, Any] | None:
    """The fields a worker needs for ``rec``; None when there is nothing to do."""
    reasoning = rec.get("reasoning")
    quality = quality and isinstance(reasoning, str)
    kind = answer_kind(rec)
    answer = answer and kind != "code"
    if not (quality or answer):
        return None
    return {"quality": quality, "answer": answer, "kind": kind, "domain": rec.get("domain") or "math",
            "problem": rec.get("problem") or "", "reasoning": reasoning or "", "answer_text": rec.get("answer") or "",
            "gold": rec.get("gold_answer"), "choices": rec.get("choices")}


def _result(reason: str | None, **extra: Any) -> dict[str, Any]:
    return {"passed": reason is None, "reason": reason, **extra}


def run_quality(job: dict[str, Any], params: WorkerParams) -> dict[str, dict[str, Any]]:
    if not job["quality"] or params.quality is None:
        return {}
    res = quality_checks(job["problem"], job["reasoning"], job["domain"], params.quality)
    return {name: _result(reason) for name, reason in res.items()}


def run_answer(job: dict[str, Any], params: WorkerParams) -> dict[str, dict[str, Any]]:
    if not job["answer"]:
        return {}
    if job["kind"] == "choice":
        v = check_choice(job["gold"], job["answer_text"], job["choices"])
    else:
        v = check_math(job["gold"], job["answer_text"], params.math_timeout_s)
    return {"correctness": _result(v.reason, extracted=v.extracted)}


def inspect(params: WorkerParams, job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {**run_quality(job, params), **run_answer(job, params)}


def on_failure(params: WorkerParams, job: dict[str, Any], why: str) -> dict[str, dict[str, Any]]:
    """A worker was killed on this job (hard timeout) or died: the quality checks are linear-time and safe to redo
    here; the answer is rejected as ``timeout`` (or ``verifier_error`` for a crash)."""
    out = run_quality(job, params)
    if job["answer"]:
        out["correctness"] = _result("timeout" if why == "timeout" else "verifier_error", extracted=None)
    return out
