"""Decontamination: word n-gram overlap between training prompts and benchmark items, with a report.

The open reproductions' rule (REFERENCE.md): lower-case, normalise whitespace, and call a prompt contaminated when
it shares any word 8-gram with a benchmark item. Benchmark n-grams are held as 64-bit hashes (a few MB for all five
suites); a text shorter than n words counts as one n-gram of all its words, so a short benchmark item that appears
verbatim is still caught. Every match is kept for ``decontamination.json`` (which benchmark item matched which
prompt, with one shared n-gram as evidence), because a reviewer has to be able to check a removal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from .benchmarks import BenchmarkTexts
from .dedup import hash64, normalise


def ngrams(text: str, n: int) -> list[str]:
    words = normalise(text).split()
    if not words:
        return []
    if len(words) < n:
        return [" ".join(words)]
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


@dataclass
class Match:
    benchmark: str
    item_id: str
    ngram: str


@dataclass
class NgramIndex:
    n: int = 8
    benchmarks: list[dict[str, Any]] = field(default_factory=list)
    _grams: dict[int, tuple[int, int] | list[tuple[int, int]]] = field(default_factory=dict)
    _items: list[tuple[str, list[str]]] = field(default_factory=list)  # per benchmark: (name, item ids)

    def add(self, bench: BenchmarkTexts) -> None:
        b = len(self._items)
        self._items.append((bench.name, bench.ids))
        grams = 0
        for i, text in enumerate(bench.texts):
            for g in set(ngrams(text, self.n)):
                key, ref = hash64(g), (b, i)
                have = self._grams.get(key)
                if have is None:
                    self._grams[key] = ref
                elif isinstance(have, list):
                    have.append(ref)
                else:
                    self._grams[key] = [have, ref]
                grams += 1
        self.benchmarks.append({"name": bench.name, "source": bench.source, "items": len(bench.texts),
                                "ngrams": grams})

    def __bool__(self) -> bool:
        return bool(self._items)

    def matches(self, text: str) -> list[Match]:
        """Benchmark items sharing an n-gram with ``text`` (one Match per item, with the first shared n-gram)."""
        found: dict[tuple[int, int], Match] = {}
        for g in ngrams(text, self.n):
            have = self._grams.get(hash64(g))
            if have is None:
                continue
            for b, i in (have if isinstance(have, list) else [have]):
                if (b, i) not in found:
                    name, ids = self._items[b]
                    found[(b, i)] = Match(name, ids[i], g)
        return list(found.values())


def build_index(sources: Iterable[BenchmarkTexts], n: int) -> NgramIndex:
    index = NgramIndex(n=n)
    for src in sources:
        index.add(src)
    return index


def report(index: NgramIndex, contaminated: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``decontamination.json`` payload: per benchmark the prompts it caught, and per prompt its matches."""
    per_bench: dict[str, set[str]] = {b["name"]: set() for b in index.benchmarks}
    for entry in contaminated:
        for m in entry["matches"]:
            per_bench.setdefault(m["benchmark"], set()).add(entry["prompt_id"])
    return {
        "ngram": index.n,
        "normalisation": "lower-cased, whitespace-normalised words",
        "benchmarks": [{**b, "contaminated_prompts": len(per_bench.get(b["name"], ()))} for b in index.benchmarks],
        "contaminated_prompts": len(contaminated),
        "matches": contaminated,
    }
