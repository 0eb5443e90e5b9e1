"""Runs the filter checks over a generations store and writes verdicts: ``kept/`` and ``rejected/`` shards.

Order: cheap structural checks first (truncation, format, length), then answer correctness (math-verify in worker
processes), then exact dedup among the survivors. A verdict keeps every check's result and the first failure as
``reject_reason``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from ..config import FilterConfig
from ..progress import StageProgress
from ..records import ShardedJsonlStore
from ..verify.math import check_math_batch
from .checks import check_format, check_truncated, make_length_check, normalised_text

BATCH = 2048


def structural_checks(cfg: FilterConfig) -> list[tuple[str, Any]]:
    checks = []
    if cfg.reject_truncated:
        checks.append(("truncation", check_truncated))
    if cfg.require_think:
        checks.append(("format", check_format))
    if cfg.max_completion_tokens:
        checks.append(("length", make_length_check(cfg.max_completion_tokens)))
    return checks


def _batches(records: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for rec in records:
        batch.append(rec)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def verdicts(generations: Iterator[dict[str, Any]], cfg: FilterConfig) -> Iterator[dict[str, Any]]:
    """Yield one verdict per generation, streaming in bounded batches."""
    checks = structural_checks(cfg)
    seen: set[tuple[str, str]] = set()
    for batch in _batches(generations, BATCH):
        results: list[dict[str, Any]] = []
        for gen in batch:
            res = {name: fn(gen) for name, fn in checks}
            results.append({name: {"passed": r is None, "reason": r} for name, r in res.items()})
        if cfg.check_answer:
            math = check_math_batch([(g.get("gold_answer"), g.get("answer") or "") for g in batch],
                                    workers=cfg.workers, timeout_s=cfg.verify_timeout_s)
            for res, m in zip(results, math):
                res["correctness"] = {"passed": m.correct, "reason": m.reason, "extracted": m.extracted}
        for gen, res in zip(batch, results):
            reason = next((r["reason"] for r in res.values() if not r["passed"]), None)
            if reason is None and cfg.dedup:
                key = (gen["prompt_id"], normalised_text(gen))
                if key in seen:
                    reason = "duplicate"
                    res["dedup"] = {"passed": False, "reason": reason}
                else:
                    seen.add(key)
                    res["dedup"] = {"passed": True, "reason": None}
            yield {**gen, "checks": res, "kept": reason is None, "reject_reason": reason}


def filter_store(gen_dir: str | Path, out_dir: str | Path, cfg: FilterConfig) -> dict[str, Any]:
    """Filter all generations in ``gen_dir``. The output is rebuilt from scratch (filtering is cheap next to
    generation and deterministic), into fresh stores, so a crash mid-way never leaves a partial result counted."""
    out_dir = Path(out_dir)
    src = ShardedJsonlStore(gen_dir)
    total = src.count()
    for sub in ("kept", "rejected"):
        for shard in ShardedJsonlStore(out_dir / sub).shards():
            shard.unlink()
    rejected: Counter[str] = Counter()
    kept_n = 0
    prompts_with_kept: set[str] = set()
    with ShardedJsonlStore(out_dir / "kept") as kept, ShardedJsonlStore(out_dir / "rejected") as rej, \
            StageProgress("filter", total=total) as bar:
        buffers: dict[str, list[dict[str, Any]]] = {"kept": [], "rejected": []}
        stores = {"kept": kept, "rejected": rej}

        def flush() -> None:
            for name, buf in buffers.items():
                stores[name].append(buf)
                buf.clear()

        for v in verdicts(iter(src), cfg):
            if v["kept"]:
                kept_n += 1
                prompts_with_kept.add(v["prompt_id"])
            else:
                rejected[v["reject_reason"]] += 1
            buffers["kept" if v["kept"] else "rejected"].append(v)
            if len(buffers["kept"]) + len(buffers["rejected"]) >= BATCH:
                flush()
            bar.advance(1, tokens=v.get("completion_tokens", 0))
        flush()
    return {"generated": total, "kept": kept_n, "rejected": dict(sorted(rejected.items())),
            "prompts_with_a_kept_sample": len(prompts_with_kept)}
