"""Evaluates a model on a benchmark: sample k answers per problem, verify each, score with the R1 metrics.

Samples are stored like teacher generations (sharded JSONL, resumable), so a long eval run killed half-way
continues where it stopped, and every sample can be inspected afterwards.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from ..config import BenchmarkConfig, DataConfig
from ..data.prompts import load_prompts
from ..config import load_entry
from ..manifest import read_json, write_json_atomic
from ..records import Sampling, ShardedJsonlStore
from ..teacher.backends.transformers_backend import TransformersBackend
from ..teacher.generate import generate_to_store
from ..verify.math import check_math_batch
from .metrics import summarise


def benchmark_prompts(bench: BenchmarkConfig):
    data = bench.data if isinstance(bench.data, DataConfig) else load_entry("data", bench.data)
    return load_prompts(data, bench.split, limit=bench.limit)


def evaluate(model_ref: str, bench: BenchmarkConfig, out_dir: str | Path, *, name: str | None = None,
             backend: Any = None, workers: int = 0) -> dict[str, Any]:
    """Evaluate one model on one benchmark; writes ``samples/`` and ``results.json`` under ``out_dir``."""
    out_dir = Path(out_dir)
    results_path = out_dir / "results.json"
    if results_path.exists():
        return read_json(results_path)
    prompts = benchmark_prompts(bench)
    backend = backend or TransformersBackend(model_ref, name=name, batch_size=bench.batch_size)
    s = bench.sampling
    sampling = Sampling(temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens, n=bench.k,
                        seed=s.seed)
    generate_to_store(prompts, backend, sampling, out_dir / "samples", description=f"eval {name or model_ref}")
    samples = list(ShardedJsonlStore(out_dir / "samples"))
    verdicts = check_math_batch([(g["gold_answer"], g["answer"] if g["finish_reason"] == "stop" or g["answer"]
                                  else "") for g in samples], workers=workers)
    per_problem: dict[str, list[tuple[str | None, bool]]] = defaultdict(list)
    stopped = 0
    for g, v in zip(samples, verdicts):
        per_problem[g["prompt_id"]].append((v.extracted, v.correct))
        stopped += g["finish_reason"] == "stop"
    results = {"model": name or model_ref, "benchmark": bench.name, **summarise(per_problem, bench.k),
               "stopped_fraction": round(stopped / max(len(samples), 1), 4),
               "mean_completion_tokens": round(sum(g["completion_tokens"] for g in samples) / max(len(samples), 1), 1)}
    write_json_atomic(results_path, results)
    return results
