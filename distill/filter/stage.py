"""Runs the filter over a generations store and writes verdicts: ``kept/`` and ``rejected/`` shards, plus
``prompt_stats.jsonl`` (per-prompt pass rates), ``decontamination.json`` (when benchmarks are listed) and
``filter_report.png``.

Order of checks per sample (the first failure is the ``reject_reason``; every check that ran is in ``checks``):

1. record: readable UTF-8 JSON with ids (``invalid_utf8``, ``malformed_record``);
2. prompt: contaminated by a benchmark (``contaminated``), or a duplicate of an earlier prompt
   (``near_duplicate_prompt``); decided once, when a prompt is first seen, so the first prompt keeps its samples;
3. structure: ``truncated``, think format (``empty_think`` ...), ``too_long``;
4. quality: ``language_mixing``, ``long_paragraph``, ``code_in_reasoning``, ``repetition_loop``;
5. correctness: math-verify / choice letter (in guarded worker processes, with the quality checks) or the code
   sandbox (``tests_failed``, ``no_tests`` ...); optionally an LLM judge re-checks wrong/unparsable answers;
6. exact duplicate sample of the same prompt (``duplicate``);
7. selection: more than k kept samples for the prompt (``over_k_per_prompt``).

Streaming: pass 1 reads the store once, holding only a bounded window of samples, per-prompt counters and hashes;
rejections are written at once, and survivors go to a spool file when a selection strategy needs to see all of a
prompt's samples first; pass 2 reads the spool and applies the per-prompt choice. The output is rebuilt from
scratch on every run (filtering is cheap next to generation, and deterministic for a given store and config).
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from ..config import FilterConfig
from ..manifest import write_json_atomic
from ..progress import StageProgress
from ..records import ShardedJsonlStore, read_jsonl, write_jsonl_atomic
from .decontam import report
from .engine import FilterRun, ok, structural_checks, verdicts  # noqa: F401 - verdicts/structural_checks: API
from .judge import Judge
from .reader import count_lines, read_generations
from .select import PromptBook

WRITE_BATCH = 512     # records per append (each append fsyncs)
SPOOL = ".selection-spool.jsonl"


class _Outputs:
    """The kept/rejected stores with write buffers, plus the counters the manifest and the plots need."""

    def __init__(self, out_dir: Path):
        self.kept = ShardedJsonlStore(out_dir / "kept").open()
        self.rejected = ShardedJsonlStore(out_dir / "rejected").open()
        self.buffers: dict[str, list[dict[str, Any]]] = {"kept": [], "rejected": []}
        self.reasons: Counter[str] = Counter()
        self.tokens = {"kept": Counter(), "rejected": Counter()}
        self.by_source: dict[str, Counter] = defaultdict(Counter)

    def route(self, v: dict[str, Any], book: PromptBook) -> None:
        side = "kept" if v["kept"] else "rejected"
        if v["kept"]:
            st = book.get(v["prompt_id"])
            if st is not None:
                st.kept += 1
        else:
            self.reasons[v["reject_reason"]] += 1
        tokens = v.get("completion_tokens")
        if isinstance(tokens, int):
            self.tokens[side][tokens] += 1
        src = self.by_source[str(v.get("source") or "")]
        src["generated"] += 1
        src[side] += 1
        buf = self.buffers[side]
        buf.append(v)
        if len(buf) >= WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        for name, buf in self.buffers.items():
            getattr(self, name).append(buf)
            buf.clear()

    def close(self) -> None:
        self.flush()
        self.kept.close()
        self.rejected.close()


def _clear(out_dir: Path) -> None:
    for sub in ("kept", "rejected"):
        for shard in ShardedJsonlStore(out_dir / sub).shards():
            shard.unlink()
    for name in (SPOOL, "prompt_stats.jsonl", "decontamination.json", "filter_report.png"):
        (out_dir / name).unlink(missing_ok=True)


def filter_store(gen_dir: str | Path, out_dir: str | Path, cfg: FilterConfig, *,
                 judge: Judge | None = None) -> dict[str, Any]:
    """Filter all generations in ``gen_dir`` into ``out_dir``; returns the manifest counts (``generated``,
    ``kept``, ``rejected`` by reason, and per-prompt and per-source figures). ``judge`` overrides the configured
    LLM judge (any ``(problem, gold, answer) -> bool``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear(out_dir)
    spool_path = out_dir / SPOOL
    with FilterRun(cfg, judge=judge) as run:
        out = _Outputs(out_dir)
        try:
            with StageProgress("filter", total=count_lines(gen_dir)) as bar:
                generated = _pass1(run, gen_dir, out, spool_path if cfg.selection.strategy != "all" else None, bar)
            kills = run.pool.killed
            run.pool.close()  # pass 2 verifies nothing
            if spool_path.exists():
                _pass2(run, spool_path, out)
        finally:
            out.close()
            spool_path.unlink(missing_ok=True)
    return _finish(out_dir, cfg, run, out, generated, kills)


def _pass1(run: FilterRun, gen_dir: str | Path, out: _Outputs, spool_path: Path | None, bar: StageProgress) -> int:
    """Verdicts for every record: rejections and (without selection) kept samples are written now; with a
    selection strategy the survivors wait in the spool for pass 2."""
    generated = 0
    with (open(spool_path, "w", encoding="utf-8") if spool_path else contextlib.nullcontext()) as spool:
        for v in verdicts(read_generations(gen_dir), run.cfg, run):
            generated += 1
            if v["kept"] and spool is not None:
                spool.write(json.dumps(v, ensure_ascii=False) + "\n")
            else:
                out.route(v, run.book)
            tokens = v.get("completion_tokens")
            bar.advance(1, tokens=tokens if isinstance(tokens, int) else 0)
    return generated


def _pass2(run: FilterRun, spool_path: Path, out: _Outputs) -> None:
    """Apply the per-prompt choice (k best by the strategy's key) to the spooled survivors."""
    for v in read_jsonl(spool_path):
        if not run.book.is_selected(v):
            v["checks"]["selection"] = ok("over_k_per_prompt")
            v["kept"], v["reject_reason"] = False, "over_k_per_prompt"
        out.route(v, run.book)


def _finish(out_dir: Path, cfg: FilterConfig, run: FilterRun, out: _Outputs, generated: int,
            kills: int) -> dict[str, Any]:
    """Write the per-prompt stats, the decontamination report and the plots; return the counts."""
    book = run.book
    write_jsonl_atomic(out_dir / "prompt_stats.jsonl", book.rows())
    if run.decontam is not None:
        write_json_atomic(out_dir / "decontamination.json", report(run.decontam, run.contaminated))
    rates = [r for r in (st.pass_rate() for st in book.prompts.values()) if r is not None]
    kept_n = sum(c["kept"] for c in out.by_source.values())
    if cfg.plots:
        from .plots import draw_report

        draw_report(out_dir / "filter_report.png", dict(out.reasons.most_common()), kept_n, out.tokens["kept"],
                    out.tokens["rejected"], rates)
    prompt_totals: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0, 0])  # prompts, with kept, rates, n
    for st in book.prompts.values():
        t = prompt_totals[st.source]
        t[0] += 1
        t[1] += st.kept > 0
        rate = st.pass_rate()
        if rate is not None:
            t[2] += rate
            t[3] += 1
    per_source: dict[str, dict[str, Any]] = {}
    for src, c in sorted(out.by_source.items()):
        n, with_kept, rate_sum, rated = prompt_totals.get(src, [0, 0, 0.0, 0])
        per_source[src] = {"generated": c["generated"], "kept": c["kept"], "rejected": c["rejected"],
                           "prompts": n, "prompts_with_a_kept_sample": with_kept,
                           "mean_pass_rate": round(rate_sum / rated, 4) if rated else None}
    statuses = Counter(st.status for st in book.prompts.values())
    counts: dict[str, Any] = {
        "generated": generated, "kept": kept_n, "rejected": dict(sorted(out.reasons.items())),
        "prompts": len(book.prompts),
        "prompts_with_a_kept_sample": sum(st.kept > 0 for st in book.prompts.values()),
        "duplicate_prompts": statuses.get("near_duplicate_prompt", 0),
        "contaminated_prompts": statuses.get("contaminated", 0),
        "mean_pass_rate": round(sum(rates) / len(rates), 4) if rates else None,
        "by_source": per_source, "code_samples_run": run.code_checked, "verifier_kills": kills,
        "selection": {"strategy": cfg.selection.strategy, "k": cfg.selection.k},
    }
    if run.judge is not None:
        counts["judge"] = run.judge.stats()
    return counts
