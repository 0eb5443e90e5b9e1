"""Deterministic data-parallel sharding of prompts, and merging the shards' outputs back into one store.

``--shard i/n`` keeps the prompts whose id hashes to ``i`` mod ``n``: stable across runs and machines (SHA-256 of
the id, not Python's salted ``hash``), so a replica that crashes and restarts gets the same prompts and resumes
its own store.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import DistillError
from ..records import Prompt, ShardedJsonlStore


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise DistillError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise DistillError(f"--shard {text}: need 0 <= i < n")
    return i, n


def shard_of(prompt_id: str, n: int) -> int:
    return int.from_bytes(hashlib.sha256(prompt_id.encode()).digest()[:8], "big") % n


def select_shard(prompts: list[Prompt], i: int, n: int) -> list[Prompt]:
    return [p for p in prompts if shard_of(p.id, n) == i]


def merge_stores(parts: list[Path], out: Path) -> int:
    """Append every record of ``parts`` not yet in ``out`` (by id): rerunnable, never duplicating."""
    with ShardedJsonlStore(out) as dest:
        have = dest.existing_ids()
        n = 0
        for part in parts:
            batch = [r for r in ShardedJsonlStore(part) if r["id"] not in have]
            have.update(r["id"] for r in batch)
            n += dest.append(batch)
    return n
