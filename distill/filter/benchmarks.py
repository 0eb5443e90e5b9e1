"""Load the texts of the benchmarks that training prompts must not overlap (decontamination sources).

A source is a built-in suite name (``aime24``, ``aime25``, ``math500``, ``gpqa_diamond``, ``livecodebench``: the
Hub datasets the R1 evaluations and the open reproductions use, loaded with ``datasets.load_dataset``), a Hub id or
local dataset folder (``hf_id``), or a local JSONL/JSON/Parquet file (``path``) with a text field. Why here and not
in ``evaluate``: decontamination needs only the problem texts, and a source that cannot be read must stop the
stage with the file named (a silently skipped benchmark would pass contaminated data as clean).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..catalog import resolve_path
from ..errors import DistillError
from ..hub_access import offline_unless_reachable


@dataclass(frozen=True)
class HubSuite:
    hf_id: str
    config: str | None
    split: str
    field: str
    kwargs: tuple[tuple[str, Any], ...] = ()


# The suites of REFERENCE.md's decontamination list, with the ids, splits and fields the open reproduction uses.
# GPQA is gated on the Hub: accept its terms and set HF_TOKEN.
BUILTIN: dict[str, HubSuite] = {
    "aime24": HubSuite("HuggingFaceH4/aime_2024", None, "train", "problem"),
    "aime25": HubSuite("yentinglin/aime_2025", None, "train", "problem"),
    "math500": HubSuite("HuggingFaceH4/MATH-500", None, "test", "problem"),
    "gpqa_diamond": HubSuite("Idavidrein/gpqa", "gpqa_diamond", "train", "Question"),
    # The Parquet layout (a config per release); the old script layout needed version_tag= and remote code,
    # which datasets >= 4 no longer runs.
    "livecodebench": HubSuite("livecodebench/code_generation_lite", "release_v5", "test", "question_content"),
}


@dataclass
class BenchmarkTexts:
    name: str
    source: str          # file path or Hub id, for the report
    ids: list[str]       # item ids (an id/unique_id field when present, else the row number)
    texts: list[str]


def load_source(src: Any) -> BenchmarkTexts:
    """``src``: a built-in name (str) or an object with ``name``, ``path``, ``hf_id``, ``config``, ``split``,
    ``field`` attributes (``DecontamSource`` in the config)."""
    if isinstance(src, str):
        if src not in BUILTIN:
            raise DistillError(f"unknown benchmark suite '{src}' (built-in: {', '.join(BUILTIN)}); "
                               "give a path or hf_id instead", where="filter.decontamination.benchmarks")
        s = BUILTIN[src]
        return _load_hub(src, s.hf_id, s.config, s.split, s.field, dict(s.kwargs))
    if src.path:
        return _load_file(src.name, resolve_path(src.path), src.field)
    return _load_hub(src.name, src.hf_id, src.config, src.split, src.field, {})


def _ids(rows: list[dict[str, Any]]) -> list[str]:
    for key in ("id", "unique_id", "ID", "question_id", "problem_id", "Record ID"):
        if rows and all(key in r for r in rows):
            return [str(r[key]) for r in rows]
    return [str(i) for i in range(len(rows))]


def _texts(rows: list[dict[str, Any]], field: str, where: str) -> list[str]:
    if rows and field not in rows[0]:
        raise DistillError(f"benchmark has no field '{field}' (fields: {', '.join(map(str, rows[0]))})", where=where)
    return [str(r.get(field) or "") for r in rows]


def _load_file(name: str, path: Path, field: str) -> BenchmarkTexts:
    where = str(path)
    if not path.is_file():
        raise DistillError("benchmark file not found", where=where)
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        elif path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            rows = data if isinstance(data, list) else data.get("data") or data.get("rows") or []
        else:
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except DistillError:
        raise
    except Exception as exc:  # noqa: BLE001 - any read/parse failure is the user's file to fix
        raise DistillError(f"cannot read benchmark file ({exc.__class__.__name__}: {str(exc)[:120]})",
                           where=where) from None
    if not all(isinstance(r, dict) for r in rows):
        raise DistillError("benchmark file rows must be JSON objects", where=where)
    return BenchmarkTexts(name, where, _ids(rows), _texts(rows, field, where))


def _load_hub(name: str, hf_id: str, config: str | None, split: str, field: str,
              kwargs: dict[str, Any]) -> BenchmarkTexts:
    where = f"{hf_id}" + (f" ({config})" if config else "") + f" split {split}"
    try:
        from datasets import load_dataset

        offline_unless_reachable()
        ds = load_dataset(hf_id, config, split=split, **kwargs)
        rows = ds.to_list()
    except Exception as exc:  # noqa: BLE001
        raise DistillError(f"cannot load benchmark '{name}' ({exc.__class__.__name__}: {str(exc)[:160]})",
                           where=where) from None
    return BenchmarkTexts(name, hf_id, _ids(rows), _texts(rows, field, where))
