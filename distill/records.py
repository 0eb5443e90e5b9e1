"""Record schemas and the crash-safe sharded JSONL store every stage reads and writes.

Three record kinds flow through the pipeline (see docs/ARCHITECTURE.md):

- ``Prompt``: a problem with its gold answer (``id``, ``problem``, ``answer``, ``domain``, ``source``, ``split``,
  optional ``tests`` for code and ``choices`` for multiple choice).
- ``Generation``: one teacher sample for one prompt: ``id`` = ``{prompt_id}/{sample_index}``, ``reasoning``,
  ``answer`` (text after ``</think>``), ``completion`` (raw generated text), ``finish_reason`` (``stop`` or
  ``length``), ``prompt_tokens``, ``completion_tokens``, ``teacher``, ``sampling``.
- ``Verdict``: a generation plus ``checks`` (check name -> {"passed", "reason"}), ``kept`` and ``reject_reason``
  (the first failed check's reason, ``None`` when kept).

Stores are folders of ``shard-NNNNN.jsonl`` files that ``datasets.load_dataset("json", ...)`` reads. Writes append
whole lines and fsync; a torn last line left by a crash is cut off when the store is reopened, so a stage killed
with SIGKILL resumes from the records that made it to disk, none lost and none duplicated (callers skip the ids
already present, see :meth:`ShardedJsonlStore.existing_ids`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import DistillError

SHARD_GLOB = "shard-*.jsonl"


@dataclass
class Prompt:
    id: str
    problem: str
    answer: str | None
    domain: str = "math"
    source: str = ""
    split: str = "train"
    tests: Any = None
    choices: list[str] | None = None

    REQUIRED = ("id", "problem")

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "") -> "Prompt":
        missing = [k for k in cls.REQUIRED if d.get(k) in (None, "")]
        if missing:
            raise DistillError(f"prompt record lacks field(s) {', '.join(missing)}", where=where or None)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Sampling:
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 32768
    n: int = 1
    seed: int = 0


@dataclass
class Generation:
    id: str
    prompt_id: str
    sample_index: int
    problem: str
    gold_answer: str | None
    completion: str
    reasoning: str | None
    answer: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    teacher: str
    sampling: dict[str, Any] = field(default_factory=dict)
    domain: str = "math"
    source: str = ""
    tests: Any = None
    choices: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("tests", "choices"):  # only code and multiple-choice records carry them
            if d[key] is None:
                del d[key]
        return d


def generation_id(prompt_id: str, sample_index: int) -> str:
    return f"{prompt_id}/{sample_index}"


class ShardedJsonlStore:
    """Append-only JSONL shards with torn-tail repair.

    ``records_per_shard`` bounds shard size so that ``datasets`` can stream and parallelise over files.
    """

    def __init__(self, root: str | Path, records_per_shard: int = 50_000):
        self.root = Path(root)
        self.records_per_shard = records_per_shard
        self._fh = None
        self._count_in_shard = 0
        self._shard_index = 0

    # --- reading -----------------------------------------------------------------------------------------------
    def shards(self) -> list[Path]:
        return sorted(self.root.glob(SHARD_GLOB)) if self.root.exists() else []

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for shard in self.shards():
            yield from read_jsonl(shard)

    def existing_ids(self, key: str = "id") -> set[str]:
        return {rec[key] for rec in self}

    def count(self) -> int:
        return sum(1 for _ in self)

    # --- writing -----------------------------------------------------------------------------------------------
    def open(self) -> "ShardedJsonlStore":
        """Repair a torn tail from a crash, then continue appending to the last shard."""
        self.root.mkdir(parents=True, exist_ok=True)
        shards = self.shards()
        if shards:
            last = shards[-1]
            repair_torn_tail(last)
            self._shard_index = int(last.stem.split("-")[1])
            self._count_in_shard = sum(1 for _ in read_jsonl(last))
        return self

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        """Append records and fsync, so a record written is a record kept even after SIGKILL or power loss."""
        n = 0
        for rec in records:
            if self._fh is None or self._count_in_shard >= self.records_per_shard:
                self._rotate()
            self._fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            self._count_in_shard += 1
            n += 1
        if self._fh is not None:
            sync(self._fh)
        return n

    def _rotate(self) -> None:
        if self._fh is not None:
            self._fh.close()
            if self._count_in_shard >= self.records_per_shard:
                self._shard_index += 1
                self._count_in_shard = 0
        path = self.root / f"shard-{self._shard_index:05d}.jsonl"
        self._fh = open(path, "a", encoding="utf-8")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "ShardedJsonlStore":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def sync(fh: Any) -> None:
    """Flush and fsync an append handle: what was written survives SIGKILL or power loss."""
    fh.flush()
    os.fsync(fh.fileno())


def repair_torn_tail(path: Path) -> int:
    """Cut a last line that lacks its newline (a write interrupted by a crash). Returns bytes removed."""
    with open(path, "rb+") as fh:
        data = fh.read()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
        return len(data) - keep


def iter_jsonl(path: str | Path, *, on_error: Any = "raise") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each JSON line. A malformed line (bad JSON, not UTF-8, not an object) raises a
    DistillError naming file and line (``on_error="raise"``), is dropped (``"skip"``), or is passed to
    ``on_error(where, why)`` and dropped (a callable: the caller reports or counts it)."""
    path = Path(path)
    if not path.exists():
        raise DistillError("file not found", where=str(path))
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except (UnicodeDecodeError, ValueError) as exc:
                why = f"malformed record ({exc.__class__.__name__}: {str(exc)[:80]})"
                if isinstance(exc, json.JSONDecodeError):  # json's own "line 2 column 1" is inside this one line
                    at = f"column {exc.colno}" if exc.lineno == 1 else "the end of the line"
                    why = f"malformed record (JSONDecodeError: {exc.msg} at {at})"
                if callable(on_error):
                    on_error(f"{path}:{lineno}", why)
                    continue
                if on_error == "skip":
                    continue
                raise DistillError(why, where=f"{path}:{lineno}") from None
            yield lineno, rec


def read_jsonl(path: str | Path, *, on_error: Any = "raise") -> Iterator[dict[str, Any]]:
    """The records of a JSONL file (see ``iter_jsonl`` for ``on_error``)."""
    for _, rec in iter_jsonl(path, on_error=on_error):
        yield rec


def write_jsonl_atomic(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Write a whole JSONL file at once: readers see the old file or the new one, never a half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
