"""CPU training throughput in real (non-padding) tokens/s: packed (bfd, padding-free) vs padded batches.

Why: packing only pays if the trainer turns the saved padding into speed. This trains the demo student's
architecture (Qwen2, hidden 64, 2 layers, the teacher's tokenizer) through the real train_student path on the same
kept traces twice, once with padded batches of 8 traces and once with packed bins of max_length tokens (~8 traces
each), and reads the trainer's own count of non-padding tokens seen. Traces are tiny-arith reference traces
lengthened to a long-tailed distribution shaped like R1's (median ~4k, tail to 32k tokens), scaled down 16x.

    python benchmarks/bench_train_throughput.py [--traces 96] [--teacher teachers/tiny-arith]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

from distill.config import StudentConfig  # noqa: E402
from distill.student.miniature import long_tail_factors, write_kept  # noqa: E402

MODELS = {  # the demo student's shape, and a wider one closer to real students' compute-bound regime
    "demo": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 2048, "tie_word_embeddings": True},
    "wide": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 2048, "tie_word_embeddings": True},
}


def teacher_ref(arg: str | None) -> str:
    """The bundled teacher's tokenizer when present; else a tiny tokenizer built on the spot (tests/tiny_models)."""
    for cand in [arg, str(ROOT / "teachers" / "tiny-arith")]:
        if cand and (Path(cand) / "tokenizer.json").exists():
            return cand
    from tests.tiny_models import build_tiny_teacher

    return str(build_tiny_teacher(Path(tempfile.mkdtemp()) / "teacher"))


def run(mode: str, teacher: str, kept: Path, max_length: int, epochs: float, threads: int, shape: dict) -> dict:
    from distill.student.model import build_student
    from distill.student.train import train_student

    packed = mode == "packed"
    cfg = StudentConfig(name=mode, init_config=shape, train={
        "learning_rate": 1e-3, "lr_scheduler_type": "constant", "warmup_ratio": 0.0, "num_train_epochs": epochs,
        "per_device_train_batch_size": 1 if packed else 8, "max_length": max_length, "packing": packed,
        "logging_steps": 5, "report_to": "none", "save_steps": 100000, "seed": 0, "threads": threads})
    model, tok = build_student(cfg, teacher, seed=0)
    out = Path(tempfile.mkdtemp(prefix=f"bench-{mode}-"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = train_student(model, tok, cfg, kept, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return m


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--traces", type=int, default=96)
    p.add_argument("--scale", type=int, default=16, help="divide R1's lengths (median 4k, cap 32k) by this")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (2 threads on a shared, busy 2-core box can be 40x slower than 1)")
    p.add_argument("--teacher", default=None, help="a folder with the tokenizer to use")
    p.add_argument("--model", choices=sorted(MODELS), default="wide")
    p.add_argument("--repeats", type=int, default=2, help="alternate the two runs this many times; best of each "
                   "(the machine is shared: the load moves during a run)")
    a = p.parse_args(argv)
    teacher = teacher_ref(a.teacher)
    max_length = 32768 // a.scale
    # A tiny-arith trace is ~50 prompt/answer tokens + ~80 reasoning tokens (teacher tokenizer); repeating the
    # reasoning k times gives ~50 + 80k tokens, so k is chosen to hit log-normal target lengths.
    targets = long_tail_factors(a.traces, median=4096 / a.scale, cap=max_length - 100, seed=0)
    factors = [max(1, round((t - 50) / 80)) for t in targets]
    kept = write_kept(Path(tempfile.mkdtemp(prefix="bench-kept-")), a.traces, repeat_reasoning=factors)
    from transformers import AutoTokenizer

    from distill.chat_template import render_training_pair
    from distill.records import ShardedJsonlStore

    tok = AutoTokenizer.from_pretrained(teacher)
    lens = [len(tok("".join(render_training_pair(tok, r["problem"], r["reasoning"], r["answer"])),
                    add_special_tokens=False)["input_ids"]) for r in ShardedJsonlStore(kept)]
    print(f"load: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {a.traces} traces, tokens: median "
          f"{statistics.median(lens):.0f}, mean {statistics.mean(lens):.0f}, max {max(lens)}; max_length {max_length}")
    import random

    order = random.Random(0).sample(lens, len(lens))
    batches = [order[i:i + 8] for i in range(0, len(order), 8)]
    pad_frac = sum(map(sum, batches)) / sum(len(b) * max(b) for b in batches)
    print(f"model {a.model} ({MODELS[a.model]['hidden_size']} hidden, {MODELS[a.model]['num_hidden_layers']} layers); "
          f"padded batches of 8 are ~{pad_frac * 100:.0f}% real tokens, so padding alone costs ~{1 / pad_frac:.1f}x")
    results: dict[str, dict] = {}
    for rep in range(a.repeats):
        for mode in ("padded", "packed"):
            m = run(mode, teacher, kept, max_length, a.epochs, a.threads, MODELS[a.model])
            print(f"{mode:7s}: {m['tokens_per_s']:7d} real tokens/s  ({m['tokens']} real tokens, {m['steps']} steps, "
                  f"{m['seconds']} s, attention {m['settings']['attn_implementation']}, load "
                  f"{os.getloadavg()[0]:.2f})")
            if mode not in results or m["tokens_per_s"] > results[mode]["tokens_per_s"]:
                results[mode] = m
    ratio = results["packed"]["tokens_per_s"] / results["padded"]["tokens_per_s"]
    print(f"best of {a.repeats}: padded {results['padded']['tokens_per_s']}, packed {results['packed']['tokens_per_s']}"
          f" real tokens/s; ratio packed / padded: {ratio:.2f}x   goal >= 2x: {'met' if ratio >= 2 else 'NOT met'}  "
          f"(load after: {os.getloadavg()[0]:.2f})")
    shutil.rmtree(kept, ignore_errors=True)


if __name__ == "__main__":
    main()
