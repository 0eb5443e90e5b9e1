"""Loads prompts for a data recipe: the built-in synthetic task, local JSONL / Parquet files, or a Hugging Face
dataset, mapping the source's field names onto ours (``fields: {problem: question, answer: solution}``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ..catalog import resolve_path
from ..config import DataConfig
from ..errors import DistillError
from ..records import Prompt, read_jsonl

SYNTHETIC = ("tiny-arith",)
OUR_FIELDS = ("id", "problem", "answer", "domain", "tests", "choices")


def load_prompts(cfg: DataConfig, split: str, limit: int | None = None) -> list[Prompt]:
    """All prompts of one split (``train`` or ``heldout``), in a stable order."""
    if cfg.kind == "synthetic":
        if cfg.generator not in SYNTHETIC:
            raise DistillError(f"unknown synthetic generator '{cfg.generator}' (known: {', '.join(SYNTHETIC)})",
                               where=f"data '{cfg.name}'")
        from ..tasks.arithmetic import make_problems

        n = cfg.train_size if split == "train" else cfg.heldout_size
        prompts = make_problems(split, n, seed=cfg.seed)
    else:
        prompts = list(_mapped(cfg, split))
    limit = limit or cfg.limit
    return prompts[:limit] if limit else prompts


def _rows(cfg: DataConfig, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) pairs; ``where`` names file and line for error messages."""
    if cfg.kind == "jsonl":
        path = _path(cfg, split)
        for lineno, rec in enumerate(read_jsonl(path), start=1):
            yield f"{path}:{lineno}", rec
        return
    from datasets import load_dataset

    try:
        if cfg.kind == "parquet":
            path = _path(cfg, split)
            ds = load_dataset("parquet", data_files=str(path), split="train")
            label = str(path)
        else:
            if not cfg.hf_id:
                raise DistillError("key 'hf_id' is required for kind 'hf'", where=f"data '{cfg.name}'")
            ds = load_dataset(cfg.hf_id, cfg.hf_config, split=cfg.splits.get(split, split))
            label = cfg.hf_id
    except DistillError:
        raise
    except Exception as exc:  # noqa: BLE001 - one clear line for any loading failure (offline, gated, missing)
        raise DistillError(f"cannot load dataset: {str(exc).splitlines()[0][:200]}",
                           where=cfg.hf_id or cfg.path) from None
    for i, row in enumerate(ds, start=1):
        yield f"{label} row {i}", row


def _path(cfg: DataConfig, split: str) -> Path:
    if not cfg.path:
        raise DistillError(f"key 'path' is required for kind '{cfg.kind}'", where=f"data '{cfg.name}'")
    path = resolve_path(cfg.path.format(split=split))
    if not path.exists():
        raise DistillError("prompt file not found", where=str(path))
    return path


def _mapped(cfg: DataConfig, split: str) -> Iterator[Prompt]:
    mapping = {f: f for f in OUR_FIELDS} | cfg.fields
    for n, (where, rec) in enumerate(_rows(cfg, split), start=1):
        if cfg.limit and n > cfg.limit:
            break
        for ours in ("problem",) + (("answer",) if "answer" in cfg.fields else ()):
            if mapping[ours] not in rec:
                raise DistillError(f"field '{mapping[ours]}' (mapped to {ours}) is missing", where=where)
        row = {ours: rec.get(theirs) for ours, theirs in mapping.items() if rec.get(theirs) is not None}
        row.setdefault("id", f"{cfg.name}-{split}-{n:07d}")
        row["id"] = str(row["id"])
        row.setdefault("domain", cfg.domain)
        row["answer"] = None if row.get("answer") is None else str(row["answer"])
        row.update(source=cfg.name, split=split)
        yield Prompt.from_dict(row, where=where)
