"""Read a generations store line by line without ever failing on one bad record.

Why not ``records.read_jsonl``: that reader raises on a line that is not UTF-8 or not JSON, which is right for
prompts and recipes (user input to fix) but wrong here: one garbled sample out of a million must become a
rejection with a reason, not stop the stage. Text that cannot be written back as UTF-8 (invalid bytes, lone
surrogates from ``\\ud800`` escapes) is repaired with U+FFFD so the verdict can be stored, and flagged.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from ..records import ShardedJsonlStore

REQUIRED = ("id", "prompt_id")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean(obj: Any) -> tuple[Any, bool]:
    """Replace unencodable characters in every string; returns (clean object, whether anything changed)."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
            return obj, False
        except UnicodeEncodeError:
            return _SURROGATE.sub("\ufffd", obj), True
    if isinstance(obj, list):
        pairs = [_clean(v) for v in obj]
        return [v for v, _ in pairs], any(c for _, c in pairs)
    if isinstance(obj, dict):
        out, changed = {}, False
        for k, v in obj.items():
            k2, ck = _clean(k)
            v2, cv = _clean(v)
            out[k2] = v2
            changed = changed or ck or cv
        return out, changed
    return obj, False


def read_generations(gen_dir: str | Path) -> Iterator[tuple[dict[str, Any], str | None]]:
    """Yield ``(record, problem)`` for every non-blank line: ``problem`` is None, ``"invalid_utf8"`` (the record is
    usable, its text repaired) or ``"malformed_record"`` (a stub record naming the file and line)."""
    for shard in ShardedJsonlStore(gen_dir).shards():
        with open(shard, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                where = f"{shard.name}:{lineno}"
                problem = None
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    text, problem = raw.decode("utf-8", "replace"), "invalid_utf8"
                try:
                    rec = json.loads(text)
                except ValueError:
                    yield _stub(where, text), "malformed_record"
                    continue
                if not isinstance(rec, dict) or any(not isinstance(rec.get(k), str) or not rec.get(k)
                                                    for k in REQUIRED):
                    yield _stub(where, text), "malformed_record"
                    continue
                if b"\\ud" in raw or b"\\uD" in raw:  # only escapes can smuggle lone surrogates in
                    rec, changed = _clean(rec)
                    if changed:
                        problem = problem or "invalid_utf8"
                yield rec, problem


def _stub(where: str, text: str) -> dict[str, Any]:
    snippet, _ = _clean(text[:200])
    return {"id": f"malformed:{where}", "prompt_id": f"malformed:{where}", "raw": snippet}


def count_lines(gen_dir: str | Path) -> int:
    """Records in a store, counted as newlines (for the progress bar: no JSON parsing)."""
    n = 0
    for shard in ShardedJsonlStore(gen_dir).shards():
        with open(shard, "rb") as fh:
            while block := fh.read(1 << 20):
                n += block.count(b"\n")
    return n
