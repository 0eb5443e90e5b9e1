"""The generate stage: prompts in, one Generation record per sample out, resumable after any crash.

Each prompt's samples are appended together and fsynced as soon as the backend returns them. On rerun the store's
torn tail is cut, the ids already on disk are skipped, and prompts with some samples missing get only the missing
ones written, so nothing is lost or duplicated. Spend (tokens, requests, money) goes to the stage's usage ledger
(``ledger.py``) after each save, so resumed runs add up to the true total.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..progress import StageProgress
from ..records import Prompt, Sampling, ShardedJsonlStore
from .backends.factory import backend_stats
from .ledger import UsageLedger


def generate_to_store(prompts: list[Prompt], backend: Any, sampling: Sampling, out_dir: str | Path,
                      description: str = "generate") -> dict[str, Any]:
    """Generate ``sampling.n`` samples per prompt into ``out_dir`` (sharded JSONL). Returns counts; the spend of
    this run and of all runs into ``out_dir`` is in ``UsageLedger(out_dir)``."""
    store = ShardedJsonlStore(out_dir).open()
    ledger = UsageLedger(out_dir).open()
    spent_before = ledger.totals().get("cost_usd", 0.0)
    try:
        have = Counter(rec["prompt_id"] for rec in store)
        existing = store.existing_ids() if have else set()
        todo = [p for p in prompts if have.get(p.id, 0) < sampling.n]
        resumed = len(prompts) - len(todo)
        written = 0
        with StageProgress(description, total=len(prompts)) as bar:
            bar.done = resumed
            for group in backend.generate(todo, replace(sampling)):
                fresh = [g.to_dict() for g in group if g.id not in existing]
                written += store.append(fresh)
                ledger.record(backend_stats(backend))
                cost = getattr(getattr(backend, "stats", None), "cost_usd", None)
                bar.advance(1, tokens=sum(g.completion_tokens for g in group),
                            cost=None if cost is None else spent_before + cost)
    finally:
        store.close()
        ledger.record(backend_stats(backend))  # spend after the last save (retries, failed prompts), unless killed
        ledger.close()
    done = Counter(rec["prompt_id"] for rec in store)
    missing = sum(1 for p in prompts if done.get(p.id, 0) < sampling.n)
    return {"prompts": len(prompts), "prompts_resumed": resumed, "prompts_missing": missing,
            "samples_written": written, "samples_total": sum(done.values())}
