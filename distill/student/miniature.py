"""The CPU miniature of student training: tiny-arith traces as a kept store, and tiny student configs.

Why: the student tests and benchmarks (packing, throughput, multi-process agreement, LoRA, GKD) all need the same
two things without running the teacher: kept records shaped like the filter stage's output, and a student small
enough to train in seconds on two cores. The traces are tiny-arith's reference solutions (what the bundled teacher
was trained to produce), so they are correct by construction.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from ..config import StudentConfig
from ..records import write_jsonl_atomic

TINY_INIT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 1024, "tie_word_embeddings": True}


def kept_rows(n: int, seed: int = 0, split: str = "train") -> list[dict[str, Any]]:
    """``n`` records in the filter stage's kept format (problem, reasoning, answer, gold answer)."""
    from ..tasks.arithmetic import make_examples

    return [{"id": f"{p.id}/0", "prompt_id": p.id, "sample_index": 0, "problem": p.problem, "gold_answer": p.answer,
             "reasoning": reasoning, "answer": answer, "finish_reason": "stop", "kept": True}
            for p, reasoning, answer in make_examples(split, n, seed)]


def write_kept(folder: str | Path, n: int, seed: int = 0, *, repeat_reasoning: list[int] | None = None) -> Path:
    """Write a kept store; ``repeat_reasoning`` (one factor per record, cycled) lengthens traces to shape a length
    distribution (the packing benchmarks use a long-tailed one, like R1's traces)."""
    rows = kept_rows(n, seed)
    if repeat_reasoning:
        for i, row in enumerate(rows):
            k = repeat_reasoning[i % len(repeat_reasoning)]
            row["reasoning"] = "\n".join([row["reasoning"]] * max(k, 1))
    folder = Path(folder)
    write_jsonl_atomic(folder / "shard-00000.jsonl", rows)
    return folder


def long_tail_factors(n: int, median: float, cap: float, seed: int = 0, sigma: float = 0.8) -> list[int]:
    """Log-normal multipliers with the given median, clipped to ``cap``: R1 traces have a ~4k-token median and a tail
    to the 32k cut-off, i.e. a cap ~8x the median."""
    rng = random.Random(seed)
    return [max(1, min(int(round(rng.lognormvariate(0, sigma) * median)), int(cap))) for _ in range(n)]


def tiny_student(**train: Any) -> StudentConfig:
    """A few-thousand-weight Qwen2 student trained with the given TrainConfig overrides (float32, CPU)."""
    base = {"learning_rate": 3e-3, "num_train_epochs": 1, "per_device_train_batch_size": 4, "max_length": 512,
            "logging_steps": 1, "report_to": "none", "warmup_ratio": 0.0, "lr_scheduler_type": "constant",
            "threads": 1}  # on a shared 2-core box, 2 torch threads can run tiny models ~40x slower than 1
    return StudentConfig(name="tiny", init_config=dict(TINY_INIT), train={**base, **train})
