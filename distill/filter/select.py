"""Per-prompt bookkeeping: pass rates (difficulty) and the choice of at most k correct samples per prompt.

Why two passes and not grouping: records of one prompt are usually contiguous in the generations store but nothing
guarantees it (a resumed generate run appends a prompt's missing samples later), so selection cannot decide when
it sees a sample. Pass 1 feeds every surviving sample to ``PromptBook.offer``, which keeps only the k best keys per
prompt (k small); pass 2 asks ``is_selected``. Both strategies are order-independent, so the choice is the same
whatever order the store has: ``shortest`` ranks by completion tokens (then sample index), ``random`` by a seeded
hash of the sample id.
"""

from __future__ import annotations

import bisect
import hashlib
import sys
from dataclasses import dataclass
from typing import Any, Iterator


@dataclass(slots=True)
class PromptStat:
    source: str
    domain: str
    samples: int = 0
    correct: int = 0
    kept: int = 0
    status: str = "ok"          # "ok" or the prompt-level reject reason
    duplicate: dict | None = None  # {"duplicate_of", "match", "jaccard"} for a duplicate prompt
    best: list | None = None  # sorted (key, sample id), at most k; only for the shortest/random strategies

    def pass_rate(self) -> float | None:
        return round(self.correct / self.samples, 4) if self.samples and self.status == "ok" else None


class PromptBook:
    def __init__(self, strategy: str = "all", k: int = 4, seed: int = 0):
        self.strategy, self.k, self.seed = strategy, k, seed
        self.prompts: dict[str, PromptStat] = {}

    def get(self, prompt_id: str) -> PromptStat | None:
        return self.prompts.get(prompt_id)

    def add(self, prompt_id: str, source: str, domain: str) -> PromptStat:
        # Interned: thousands of prompts share a handful of source and domain names.
        st = self.prompts[prompt_id] = PromptStat(sys.intern(source), sys.intern(domain))
        return st

    def _key(self, rec: dict[str, Any]) -> tuple:
        if self.strategy == "shortest":
            return (int(rec.get("completion_tokens") or 0), int(rec.get("sample_index") or 0), rec["id"])
        digest = hashlib.blake2b(f"{self.seed}\0{rec['id']}".encode("utf-8", "replace"), digest_size=8).digest()
        return (digest, rec["id"])

    def offer(self, rec: dict[str, Any]) -> None:
        """A sample that passed every check: remember it if it is among the k best of its prompt."""
        if self.strategy == "all":
            return
        st = self.prompts[rec["prompt_id"]]
        if st.best is None:
            st.best = []
        best = st.best
        item = (self._key(rec), rec["id"])
        if len(best) < self.k or item < best[-1]:
            bisect.insort(best, item)
            del best[self.k:]

    def is_selected(self, rec: dict[str, Any]) -> bool:
        if self.strategy == "all":
            return True
        return any(sid == rec["id"] for _, sid in self.prompts[rec["prompt_id"]].best or ())

    def rows(self) -> Iterator[dict[str, Any]]:
        """``prompt_stats.jsonl`` rows, in first-seen order."""
        for pid, st in self.prompts.items():
            row = {"prompt_id": pid, "source": st.source, "domain": st.domain, "status": st.status,
                   "samples": st.samples, "correct": st.correct, "pass_rate": st.pass_rate(), "kept": st.kept}
            if st.duplicate:
                row.update(st.duplicate)
            yield row
