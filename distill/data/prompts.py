"""Loads prompts for a data recipe: the built-in synthetic task, local JSONL / Parquet files, or a Hugging Face
dataset, mapping the source's field names onto ours (``fields: {problem: question, answer: solution}``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ..catalog import resolve_path
from ..config import DataConfig
from ..errors import DistillError
from ..hub_access import offline_unless_reachable
from ..records import Prompt, iter_jsonl

SYNTHETIC = ("tiny-arith",)
OUR_FIELDS = ("id", "problem", "answer", "domain", "tests", "choices")


class BadRows:
    """Rows that could not become prompts. With ``on_bad_row: fail`` the first one is a DistillError naming its
    file and line; with ``skip`` each is reported (the first few one by one) and counted for the manifest."""

    SHOW = 10

    def __init__(self, mode: str):
        self.mode = mode
        self.where: list[str] = []

    def __call__(self, where: str, why: str) -> None:
        if self.mode == "fail":
            raise DistillError(f"{why} (set data.on_bad_row=skip to report and skip such rows)", where=where)
        self.where.append(where)
        if len(self.where) <= self.SHOW:
            from ..progress import console

            console.print(f"[yellow]skipped[/yellow] {where}: {why}", highlight=False)


def load_prompts(cfg: DataConfig, split: str, limit: int | None = None,
                 bad: BadRows | None = None) -> list[Prompt]:
    """All prompts of one split (``train`` or ``heldout``), in a stable order. Skipped rows land in ``bad``."""
    if cfg.kind == "synthetic":
        if cfg.generator not in SYNTHETIC:
            raise DistillError(f"unknown synthetic generator '{cfg.generator}' (known: {', '.join(SYNTHETIC)})",
                               where=f"data '{cfg.name}'")
        from ..tasks.arithmetic import make_problems

        n = cfg.train_size if split == "train" else cfg.heldout_size
        prompts = make_problems(split, n, seed=cfg.seed)
    else:
        prompts = list(_mapped(cfg, split, bad if bad is not None else BadRows(cfg.on_bad_row)))
    limit = limit or cfg.limit
    return prompts[:limit] if limit else prompts


def _jsonl_rows(path: Path, bad: BadRows) -> Iterator[tuple[str, dict[str, Any]]]:
    for lineno, rec in iter_jsonl(path, on_error=bad):
        yield f"{path}:{lineno}", rec


def _rows(cfg: DataConfig, split: str, bad: BadRows) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) pairs; ``where`` names file and line for error messages."""
    if cfg.kind == "jsonl":
        yield from _jsonl_rows(_path(cfg, split), bad)
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
            offline_unless_reachable()
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


def _mapped(cfg: DataConfig, split: str, bad: BadRows) -> Iterator[Prompt]:
    mapping = {f: f for f in OUR_FIELDS} | cfg.fields
    n = 0
    for where, rec in _rows(cfg, split, bad):
        if cfg.limit and n >= cfg.limit:
            break
        missing = [f"field '{mapping[ours]}' (mapped to {ours}) is missing"
                   for ours in ("problem",) + (("answer",) if "answer" in cfg.fields else ()) if mapping[ours] not in rec]
        if missing:
            bad(where, missing[0])
            continue
        n += 1
        row = {ours: rec.get(theirs) for ours, theirs in mapping.items() if rec.get(theirs) is not None}
        row.setdefault("id", f"{cfg.name}-{split}-{n:07d}")
        row["id"] = str(row["id"])
        row.setdefault("domain", cfg.domain)
        row["answer"] = None if row.get("answer") is None else str(row["answer"])
        row.update(source=cfg.name, split=split)
        try:
            prompt = Prompt.from_dict(row, where=where)
        except DistillError as exc:
            bad(where, str(exc).removeprefix(f"{where}: "))
            continue
        yield prompt
