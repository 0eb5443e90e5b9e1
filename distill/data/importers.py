"""Importers that turn published reasoning-trace datasets into our Generation records.

Users can filter and train on existing traces without generating any. Supported layouts (as published on the
Hub; local JSONL/Parquet copies or Hub ids both work):

- ``openr1-math``   OpenR1-Math-220k: ``problem``, ``answer``, ``generations`` (list), ``finish_reasons`` (list)
- ``openthoughts``  OpenThoughts-114k: ``system``, ``conversations`` [{from, value}] with
                    ``<|begin_of_thought|>…<|end_of_thought|>`` and ``<|begin_of_solution|>…<|end_of_solution|>``
- ``bespoke-stratos`` Bespoke-Stratos-17k: the same layout as OpenThoughts
- ``s1k``           s1K-1.1: ``question``, ``solution`` (gold), ``deepseek_thinking_trajectory``,
                    ``deepseek_attempt``
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from ..chat_template import THINK_CLOSE, THINK_OPEN
from ..errors import DistillError
from ..hub_access import offline_unless_reachable
from ..records import Generation, generation_id

THOUGHT = re.compile(r"<\|begin_of_thought\|>(.*?)<\|end_of_thought\|>", re.S)
SOLUTION = re.compile(r"<\|begin_of_solution\|>(.*?)(?:<\|end_of_solution\|>|$)", re.S)


def _pid(source: str, problem: str) -> str:
    return f"{source}-{hashlib.sha256(problem.encode()).hexdigest()[:12]}"


def _gen(source: str, problem: str, gold: str | None, i: int, reasoning: str | None, answer: str,
         finish: str = "stop", domain: str = "math") -> Generation:
    pid = _pid(source, problem)
    reasoning_text = (reasoning or "").strip()
    completion = f"{THINK_OPEN}\n{reasoning_text}\n{THINK_CLOSE}\n\n{answer.strip()}" if reasoning is not None \
        else answer
    return Generation(id=generation_id(pid, i), prompt_id=pid, sample_index=i, problem=problem, gold_answer=gold,
                      completion=completion, reasoning=reasoning_text if reasoning is not None else None,
                      answer=answer.strip(), finish_reason=finish, prompt_tokens=0,
                      completion_tokens=len(completion.split()), teacher=source, sampling={}, domain=domain,
                      source=source)


def _split_think(text: str) -> tuple[str | None, str]:
    if THINK_CLOSE not in text:
        return None, text
    head, _, tail = text.partition(THINK_CLOSE)
    return head.replace(THINK_OPEN, "", 1).strip(), tail.strip()


def openr1_math(row: dict[str, Any]) -> Iterator[Generation]:
    gens = row.get("generations") or []
    finishes = row.get("finish_reasons") or [None] * len(gens)
    for i, text in enumerate(gens):
        reasoning, answer = _split_think(text)
        finish = "length" if finishes[i] == "length" else "stop"
        yield _gen("openr1-math", row["problem"], row.get("answer"), i, reasoning, answer, finish)


def openthoughts(row: dict[str, Any], source: str = "openthoughts") -> Iterator[Generation]:
    turns = row.get("conversations") or []
    user = next((t["value"] for t in turns if t.get("from") in ("user", "human")), None)
    reply = next((t["value"] for t in turns if t.get("from") in ("assistant", "gpt")), None)
    if user is None or reply is None:
        raise ValueError("conversations lack a user or an assistant turn")
    thought, solution = THOUGHT.search(reply), SOLUTION.search(reply)
    yield _gen(source, user, row.get("ground_truth_solution"), 0, thought.group(1) if thought else None,
               solution.group(1) if solution else reply, domain=row.get("domain", "math"))


def s1k(row: dict[str, Any]) -> Iterator[Generation]:
    yield _gen("s1k", row["question"], row.get("solution"), 0, row.get("deepseek_thinking_trajectory"),
               row.get("deepseek_attempt") or "", domain=row.get("cot_type", "math"))


FORMATS: dict[str, Callable[[dict[str, Any]], Iterator[Generation]]] = {
    "openr1-math": openr1_math, "openthoughts": openthoughts,
    "bespoke-stratos": lambda row: openthoughts(row, "bespoke-stratos"), "s1k": s1k,
}


def load_rows(source: str, split: str = "train") -> Iterator[dict[str, Any]]:
    """Rows from a local .jsonl/.json/.parquet file or a Hub dataset id (needs the network or the HF cache)."""
    from datasets import load_dataset

    path = Path(source)
    try:
        if path.suffix in (".jsonl", ".json", ".parquet"):
            if not path.exists():
                raise DistillError("file not found", where=source)
            ds = load_dataset("parquet" if path.suffix == ".parquet" else "json", data_files=str(path), split="train")
        else:
            offline_unless_reachable()
            ds = load_dataset(source, split=split)
    except DistillError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; one clear line for the user
        raise DistillError(f"cannot load dataset: {str(exc).splitlines()[0][:200]}", where=source) from None
    yield from ds


def import_traces(fmt: str, source: str, split: str = "train", limit: int | None = None) -> Iterator[Generation]:
    if fmt not in FORMATS:
        raise DistillError(f"unknown format '{fmt}' (known: {', '.join(FORMATS)})")
    convert = FORMATS[fmt]
    for i, row in enumerate(load_rows(source, split)):
        if limit is not None and i >= limit:
            break
        try:
            yield from convert(row)
        except (KeyError, ValueError, TypeError) as exc:
            raise DistillError(f"row {i + 1} does not look like {fmt}: {exc}", where=source) from None
