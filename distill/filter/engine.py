"""Pass 1 of the filter, per sample: the parent's checks (record, prompt gate, structure), the worker processes'
checks (quality, math/choice correctness), then the code sandbox, the optional judge and sample dedup.

``FilterRun`` holds what a pass remembers (prompt gate, per-prompt stats and selection keys, sample hashes, the
verifier pool, the judge); ``verdicts`` streams one verdict per generation through it, in input order. The check
order and reasons are listed in ``stage``.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Iterable, Iterator

from ..config import FilterConfig
from ..verify.math import default_hard_timeout, warm_up
from .benchmarks import load_source
from .checks import check_format, check_truncated, make_length_check
from .decontam import NgramIndex, build_index
from .dedup import PromptDeduper, SampleDeduper
from .judge import Judge, JudgeRunner, openai_judge
from .pool import GuardedPool
from .quality import QualityParams
from .select import PromptBook, PromptStat
from .worker import WorkerParams, answer_kind, inspect, make_job, on_failure

BATCH = 256           # samples finished together (code sandbox and judge calls are batched)
JUDGEABLE = ("wrong_answer", "unparsable_answer")


def structural_checks(cfg: FilterConfig) -> list[tuple[str, Any]]:
    checks = []
    if cfg.reject_truncated:
        checks.append(("truncation", check_truncated))
    if cfg.require_think:
        checks.append(("format", check_format))
    if cfg.max_completion_tokens:
        checks.append(("length", make_length_check(cfg.max_completion_tokens)))
    return checks


def ok(reason: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"passed": reason is None, "reason": reason, **extra}


class FilterRun:
    """Everything one filter pass remembers: the prompt gate (dedup, decontamination), per-prompt stats and
    selection, sample hashes, the verifier pool and the judge. ``with FilterRun(cfg) as run: verdicts(..., run)``."""

    def __init__(self, cfg: FilterConfig, judge: Judge | None = None):
        self.cfg = cfg
        pd = cfg.prompt_dedup
        self.deduper = (PromptDeduper(exact=pd.exact, near=pd.near, threshold=pd.threshold, shingle=pd.shingle,
                                      num_perm=pd.num_perm, seed=pd.seed) if (pd.exact or pd.near) else None)
        dc = cfg.decontamination
        self.decontam: NgramIndex | None = (build_index((load_source(s) for s in dc.benchmarks), dc.ngram)
                                            if dc.benchmarks else None)
        self.contaminated: list[dict[str, Any]] = []
        sel = cfg.selection
        self.book = PromptBook(sel.strategy, sel.k, sel.seed)
        self.samples = SampleDeduper()
        if judge is None and cfg.judge.enabled:
            j = cfg.judge
            judge = openai_judge(j.base_url, j.model, api_key_env=j.api_key_env, timeout_s=j.timeout_s)
        self.judge = (JudgeRunner(judge, workers=cfg.judge.workers, where=f"filter.judge ({cfg.judge.base_url})",
                                  max_consecutive_errors=cfg.judge.max_consecutive_errors) if judge else None)
        self.params = WorkerParams(QualityParams(**cfg.quality.model_dump()), cfg.verify_timeout_s)
        self.structural = structural_checks(cfg)
        self.pool: GuardedPool | None = None
        self.code_checked = 0

    def __enter__(self) -> "FilterRun":
        cfg = self.cfg
        if cfg.check_answer:
            warm_up()
        self.pool = GuardedPool(functools.partial(inspect, self.params), workers=cfg.workers,
                                on_fail=functools.partial(on_failure, self.params), memory_mb=cfg.worker_memory_mb,
                                hard_timeout_s=cfg.verify_hard_timeout_s or default_hard_timeout(cfg.verify_timeout_s))
        self.pool.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    # --- prompt gate -------------------------------------------------------------------------------------------
    def prompt(self, rec: dict[str, Any]) -> PromptStat:
        """The prompt's stats, deciding contamination and duplication when the prompt is first seen."""
        pid = rec["prompt_id"]
        st = self.book.get(pid)
        if st is not None:
            return st
        st = self.book.add(pid, str(rec.get("source") or ""), str(rec.get("domain") or "math"))
        problem = rec.get("problem") or ""
        if not isinstance(problem, str):
            problem = str(problem)
        if not problem.strip():
            return st  # nothing to compare: never call two text-less prompts duplicates
        if self.decontam:
            matches = self.decontam.matches(problem)
            if matches:
                st.status = "contaminated"
                self.contaminated.append({"prompt_id": pid, "problem": problem[:300],
                                          "matches": [m.__dict__ for m in matches]})
        if self.deduper is not None:
            dup = self.deduper.check_and_add(pid, problem)
            if dup is not None and st.status == "ok":
                st.status = "near_duplicate_prompt"
                st.duplicate = {"duplicate_of": dup.of, "match": dup.match, "jaccard": dup.jaccard}
        return st

    # --- pass 1, parent side before the workers ---------------------------------------------------------------
    def prepare(self, rec: dict[str, Any], problem: str | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Checks done in the parent; returns (results so far, worker job or None)."""
        res: dict[str, Any] = {}
        if problem == "malformed_record":
            return {"record": ok(problem)}, None
        res["record"] = ok(problem)
        st = self.prompt(rec)
        st.samples += 1
        if problem:
            return res, None
        if st.status != "ok":
            res["prompt"] = ok(st.status, **(st.duplicate or {}))
            return res, None
        res["prompt"] = ok()
        for name, fn in self.structural:
            res[name] = ok(fn(rec))
        answerable = all(res[n]["passed"] for n in ("truncation", "format") if n in res)
        clean = all(r["passed"] for r in res.values())
        job = make_job(rec, quality=clean, answer=self.cfg.check_answer and answerable)
        rec["_code"] = self.cfg.check_answer and answerable and answer_kind(rec) == "code"
        return res, job

    # --- pass 1, parent side after the workers ----------------------------------------------------------------
    def finish(self, chunk: list[tuple[dict[str, Any], dict[str, Any]]]) -> Iterator[dict[str, Any]]:
        self._check_code([(rec, res) for rec, res in chunk if rec.pop("_code", False)])
        judged = self._judge(chunk)
        for (rec, res), was_judged in zip(chunk, judged):
            corr = res.get("correctness")
            if corr is not None and corr["passed"]:
                self.book.prompts[rec["prompt_id"]].correct += 1
            reason = next((r["reason"] for r in res.values() if not r["passed"]), None)
            if reason is None and self.cfg.dedup:
                dup = self.samples.seen_before(rec["prompt_id"], str(rec.get("completion") or ""))
                res["dedup"] = ok("duplicate" if dup else None)
                reason = "duplicate" if dup else None
            v = {**rec, "checks": res, "kept": reason is None, "reject_reason": reason, "judged": was_judged}
            if v["kept"]:
                self.book.offer(v)
            yield v

    def _check_code(self, items: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        if not items:
            return
        from ..verify.code import verify_many
        from ..verify.sandbox import SandboxLimits

        c = self.cfg.code
        limits = SandboxLimits(wall_s=c.test_timeout_s, cpu_s=c.test_timeout_s, memory_mb=c.memory_mb)
        jobs = []
        for rec, _ in items:
            tests = rec.get("tests")
            if isinstance(tests, list) and rec.get("fn_name"):
                tests = {"fn_name": rec["fn_name"], "tests": tests}
            jobs.append((str(rec.get("answer") or ""), tests))
        verdicts = verify_many(jobs, limits, c.threshold, workers=c.workers or os.cpu_count() or 1,
                               stop_on_first_failure=c.stop_on_first_failure)
        self.code_checked += len(items)
        for (rec, res), v in zip(items, verdicts):
            reason = None if v.passed else (v.reason if v.reason in ("no_tests", "no_code_block") else "tests_failed")
            res["correctness"] = ok(reason, pass_rate=round(v.pass_rate, 4), detail=v.reason)

    def _judge(self, chunk: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[bool]:
        judged = [False] * len(chunk)
        if self.judge is None:
            return judged
        idx = []
        for i, (rec, res) in enumerate(chunk):
            corr = res.get("correctness")
            others_pass = all(r["passed"] for name, r in res.items() if name != "correctness")
            if (corr and corr["reason"] in JUDGEABLE and others_pass and rec.get("gold_answer") not in (None, "")
                    and answer_kind(rec) != "code"):
                idx.append(i)
        outcomes = self.judge.run([(str(chunk[i][0].get("problem") or ""), str(chunk[i][0]["gold_answer"]),
                                    str(chunk[i][0].get("answer") or "")) for i in idx])
        for i, accepted in zip(idx, outcomes):
            res = chunk[i][1]
            if accepted:
                res["correctness"] = {**res["correctness"], "passed": True, "reason": None, "judged": True}
                judged[i] = True
            # After correctness, so a refusal never changes the reject reason (still wrong/unparsable answer).
            res["judge"] = ok(None if accepted else ("judge_error" if accepted is None else "judge_rejected"))
        return judged


def verdicts(generations: Iterable[Any], cfg: FilterConfig, run: FilterRun | None = None
             ) -> Iterator[dict[str, Any]]:
    """Pass 1: one verdict per generation, in input order, streaming. ``generations`` yields records, or
    ``(record, problem)`` pairs from ``reader.read_generations``."""
    if run is None:
        with FilterRun(cfg) as own:
            yield from verdicts(generations, cfg, own)
        return

    def prepared() -> Iterator[tuple[tuple[dict[str, Any], dict[str, Any]], dict[str, Any] | None]]:
        for item in generations:
            rec, problem = item if isinstance(item, tuple) else (item, None)
            res, job = run.prepare(rec, problem)
            yield (rec, res), job

    chunk: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for (rec, res), out in run.pool.imap(prepared()):
        if out:
            res.update(out)
        chunk.append((rec, res))
        if len(chunk) >= BATCH:
            yield from run.finish(chunk)
            chunk = []
    yield from run.finish(chunk)
