"""The spend ledger: tokens, requests, failures and money of every teacher run, added up across resumes.

Why a ledger and not the manifest alone: a run that is killed (SIGKILL, a network cut, a pre-empted node) never
writes its manifest, yet it spent tokens and money on every prompt it managed to save. The generate stage appends
one line here each time it saves a prompt's samples, holding the counters' growth since the previous line, and
fsyncs it with them. Summing the lines gives the spend of all runs together, each token counted once; a rerun
adds only what it spends itself. The line is written right after the samples it paid for, so after a crash the
ledger can miss at most the requests in flight at that moment, never count one twice.

The ledger is ``usage.jsonl`` in the stage folder, next to the sample shards (which it never mixes with: those are
``shard-*.jsonl``).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from ..records import read_jsonl, repair_torn_tail, sync

LEDGER_NAME = "usage.jsonl"
# Live gauges, not amounts: they never add up across runs.
NOT_ADDITIVE = frozenset({"in_flight", "failed", "failed_prompts"})


def flatten_counters(stats: dict[str, Any]) -> dict[str, float]:
    """The additive numbers of a backend's stats, nested dicts flattened (``errors.rate_limited``)."""
    out: dict[str, float] = {}
    for key, value in stats.items():
        if key in NOT_ADDITIVE or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[key] = value
        elif isinstance(value, dict):
            for sub, v in value.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{key}.{sub}"] = v
    return out


def _add(total: dict[str, float], part: dict[str, Any]) -> None:
    for key, value in part.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value


def _tidy(values: dict[str, float]) -> dict[str, float]:
    return {k: (round(v, 9) if isinstance(v, float) else v) for k, v in sorted(values.items())}


class UsageLedger:
    """``with UsageLedger(folder) as ledger: ... ledger.record(backend_stats(backend))`` after each save."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LEDGER_NAME
        self.run_id = uuid.uuid4().hex[:12]
        self._last: dict[str, float] = {}
        self._fh = None

    def totals(self) -> dict[str, float]:
        """Everything recorded so far, by every run. A torn last line (a crash mid-write) is ignored."""
        total: dict[str, float] = {}
        if self.path.exists():
            for line in read_jsonl(self.path, on_error="skip"):
                _add(total, line.get("delta", {}))
        return _tidy(total)

    def runs(self) -> int:
        if not self.path.exists():
            return 0
        return len({line.get("run") for line in read_jsonl(self.path, on_error="skip")})

    def open(self) -> "UsageLedger":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            repair_torn_tail(self.path)
        self._fh = open(self.path, "a", encoding="utf-8")
        return self

    def record(self, stats: dict[str, Any]) -> dict[str, float]:
        """Append the growth of ``stats`` since the last call (nothing when nothing grew); returns it."""
        now = flatten_counters(stats)
        delta = {k: v - self._last.get(k, 0) for k, v in now.items() if v != self._last.get(k, 0)}
        self._last = now
        if delta and self._fh is not None:
            self._fh.write(json.dumps({"run": self.run_id, "t": round(time.time(), 3), "delta": _tidy(delta)}) + "\n")
            sync(self._fh)
        return delta

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "UsageLedger":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
