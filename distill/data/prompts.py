"""Loads prompts for a data recipe: the built-in synthetic task or a local JSONL file with a field mapping."""

from __future__ import annotations

from pathlib import Path

from ..catalog import resolve_path
from ..config import DataConfig
from ..errors import DistillError
from ..records import Prompt, read_jsonl

SYNTHETIC = ("tiny-arith",)


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
        prompts = load_jsonl_prompts(cfg, split)
    return prompts[:limit] if limit else prompts


def load_jsonl_prompts(cfg: DataConfig, split: str) -> list[Prompt]:
    if not cfg.path:
        raise DistillError("key 'path' is required for kind 'jsonl'", where=f"data '{cfg.name}'")
    path = resolve_path(cfg.path.format(split=split))
    if not Path(path).exists():
        raise DistillError("prompt file not found", where=str(path))
    mapping = {"id": "id", "problem": "problem", "answer": "answer", "domain": "domain", **cfg.fields}
    out = []
    for lineno, rec in enumerate(read_jsonl(path), start=1):
        row = {ours: rec.get(theirs) for ours, theirs in mapping.items() if rec.get(theirs) is not None}
        row.setdefault("id", f"{cfg.name}-{lineno:07d}")
        row["answer"] = None if row.get("answer") is None else str(row["answer"])
        row.update(source=cfg.name, split=split)
        out.append(Prompt.from_dict(row, where=f"{path}:{lineno}"))
    return out
