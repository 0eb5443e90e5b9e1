"""The generate stage: prompts in, one Generation record per sample out, resumable after any crash.

Each prompt's samples are appended together and fsynced as soon as the backend returns them. On rerun the store's
torn tail is cut, the ids already on disk are skipped, and prompts with some samples missing get only the missing
ones written, so nothing is lost or duplicated.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..progress import StageProgress
from ..records import Prompt, Sampling, ShardedJsonlStore


def generate_to_store(prompts: list[Prompt], backend: Any, sampling: Sampling, out_dir: str | Path,
                      description: str = "generate") -> dict[str, Any]:
    """Generate ``sampling.n`` samples per prompt into ``out_dir`` (sharded JSONL). Returns counts."""
    store = ShardedJsonlStore(out_dir).open()
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
                cost = getattr(getattr(backend, "stats", None), "cost_usd", None)
                bar.advance(1, tokens=sum(g.completion_tokens for g in group), cost=cost)
    finally:
        store.close()
    done = Counter(rec["prompt_id"] for rec in store)
    missing = sum(1 for p in prompts if done.get(p.id, 0) < sampling.n)
    return {"prompts": len(prompts), "prompts_resumed": resumed, "prompts_missing": missing,
            "samples_written": written, "samples_total": sum(done.values())}
