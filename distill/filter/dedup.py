"""Duplicate prompts (exact and near, MinHash LSH on word shingles) and duplicate samples (exact, hashed).

Why at the prompt level: the same problem scraped twice (reworded, re-spaced, renumbered list) gives the student
the same lesson twice and skews the per-prompt pass rates. The first prompt seen keeps its samples; later
duplicates are rejected with the prompt they duplicate. Near-duplicates: ``datasketch.MinHash`` signatures of
word shingles, banded LSH (bands and rows chosen like ``datasketch.MinHashLSH``: least weighted false positive +
false negative probability at the threshold), and every LSH candidate confirmed by the MinHash Jaccard estimate,
so a chance band collision does not drop a distinct prompt.

Memory, which grows with the number of prompts (not samples): the band index is our own compact one (one int
key per band pointing at a prompt number, and the signature as raw bytes, ~1 KB a prompt at 128 permutations;
``MinHashLSH``'s bytes keys and per-bucket sets cost about three times that). Samples are 64-bit hashes only.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
from datasketch import MinHash


def normalise(text: str) -> str:
    """Lower case, single spaces: the form both dedup and decontamination compare."""
    return " ".join(text.lower().split())


def hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "little")


def shingles(words: list[str], n: int) -> set[bytes]:
    if len(words) <= n:
        return {" ".join(words).encode("utf-8", "replace")}
    return {" ".join(words[i:i + n]).encode("utf-8", "replace") for i in range(len(words) - n + 1)}


@dataclass
class Duplicate:
    of: str            # the earlier prompt id kept
    match: str         # "exact" or "minhash"
    jaccard: float     # 1.0 for exact, else the MinHash estimate


@functools.lru_cache(maxsize=None)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimising the false positive + false negative probability mass around ``threshold``."""
    lo, hi = np.linspace(0.0, threshold, 201), np.linspace(threshold, 1.0, 201)
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(1 - (1 - lo ** r) ** b, lo)
            fn = np.trapezoid((1 - hi ** r) ** b, hi)
            if fp + fn < best_err:
                best, best_err = (b, r), fp + fn
    return best


class BandIndex:
    """Banded LSH over MinHash signatures: ``candidates(sig)`` -> earlier prompt numbers sharing a band."""

    def __init__(self, bands: int, rows: int):
        self.bands, self.rows = bands, rows
        self.tables: list[dict[int, int | list[int]]] = [{} for _ in range(bands)]
        self.ids: list[str] = []
        self.sigs: list[bytes] = []

    def keys(self, sig: np.ndarray) -> list[int]:
        r = self.rows
        return [hash(sig[i * r:(i + 1) * r].tobytes()) for i in range(self.bands)]

    def candidates(self, keys: list[int]) -> set[int]:
        found: set[int] = set()
        for table, key in zip(self.tables, keys):
            hit = table.get(key)
            if hit is None:
                continue
            if isinstance(hit, int):
                found.add(hit)
            else:
                found.update(hit)
        return found

    def insert(self, prompt_id: str, sig: np.ndarray, keys: list[int]) -> None:
        idx = len(self.ids)
        self.ids.append(prompt_id)
        self.sigs.append(sig.tobytes())
        for table, key in zip(self.tables, keys):
            hit = table.get(key)
            if hit is None:
                table[key] = idx
            elif isinstance(hit, int):
                table[key] = [hit, idx]
            else:
                hit.append(idx)


class PromptDeduper:
    """``check_and_add(prompt_id, text)`` -> ``Duplicate`` of an earlier prompt, or None (then it is indexed)."""

    def __init__(self, *, exact: bool = True, near: bool = True, threshold: float = 0.9, shingle: int = 3,
                 num_perm: int = 128, seed: int = 0):
        self.exact, self.near, self.threshold, self.shingle = exact, near, threshold, shingle
        self.num_perm, self.seed = num_perm, seed
        self._exact: dict[int, str] = {}
        self._lsh = BandIndex(*lsh_params(threshold, num_perm)) if near else None
        # One MinHash object reused: its permutations are built once (they cost more than the hashing).
        self._mh = MinHash(num_perm=num_perm, seed=seed)
        self._empty = self._mh.hashvalues.copy()
        self._dtype = np.uint32 if int(self._empty.max()) <= 0xFFFFFFFF else np.uint64

    def signature(self, text: str) -> np.ndarray:
        self._mh.hashvalues = self._empty.copy()
        self._mh.update_batch(list(shingles(normalise(text).split(), self.shingle)))
        return self._mh.hashvalues.astype(self._dtype)

    def check_and_add(self, prompt_id: str, text: str) -> Duplicate | None:
        norm = normalise(text)
        key = hash64(norm)
        if self.exact:
            if key in self._exact:
                return Duplicate(self._exact[key], "exact", 1.0)
            self._exact[key] = prompt_id
        if self._lsh is None:
            return None
        sig = self.signature(norm)
        keys = self._lsh.keys(sig)
        best: Duplicate | None = None
        for cand in sorted(self._lsh.candidates(keys)):  # sorted: ties go to the earliest prompt
            j = float(np.mean(np.frombuffer(self._lsh.sigs[cand], dtype=self._dtype) == sig))
            if j >= self.threshold and (best is None or j > best.jaccard):
                best = Duplicate(self._lsh.ids[cand], "minhash", round(j, 4))
        if best is not None:
            return best
        self._lsh.insert(prompt_id, sig, keys)
        return None


class SampleDeduper:
    """Exact duplicate samples of one prompt (whitespace-normalised completion), remembered as 64-bit hashes."""

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def seen_before(self, prompt_id: str, completion: str) -> bool:
        key = hash64(prompt_id + "\0" + " ".join(completion.split()))
        if key in self._seen:
            return True
        self._seen.add(key)
        return False
