"""GKD's loss: the memory and time of our chunked generalised JSD against TRL's own, side by side.

Why: TRL 1.16's ``GKDTrainer.generalized_jsd_loss`` holds 15 vocabulary-wide float32 tensors per token beyond its
two logits inputs, which put GKD at R1 trace lengths out of reach (158 GiB per GPU for the loss alone at 32k
tokens of Qwen's vocabulary). distill/student/jsd.py computes the same value and gradient a chunk of tokens at a
time. This runs both, forward and backward, on the same random logits (float32, CPU) and prints for each the
peak memory beyond the inputs (torch's memory profiler), in bytes per token x vocabulary entry, and the wall time
of one forward + backward (best of ``--repeats``, outside the profiler); then the ratio, and what the memory
plan (memory.gkd_loss_bytes) says each would take for the 1.5B GKD recipe's 32k tokens under ZeRO-3.

    python benchmarks/bench_gkd_loss_memory.py [--tokens 4096] [--vocab 8192] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_beyond_inputs(loss_fn, student, teacher, labels) -> float:
    """Bytes per token x vocabulary entry the loss's forward and backward hold beyond their inputs at the peak."""
    from tests.memory_timeline import live_bytes

    start, peak = live_bytes(lambda: loss_fn(student, teacher, labels=labels, beta=0.5).backward())
    student.grad = None
    return (peak - start) / student[0].numel()


def seconds(loss_fn, student, teacher, labels, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        loss_fn(student, teacher, labels=labels, beta=0.5).backward()
        best = min(best, time.perf_counter() - start)
        student.grad = None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from trl.experimental.gkd import GKDTrainer

    from distill.student.jsd import CHUNK_TOKENS, MIXTURE_CHUNK_TEMPORARIES, chunked_generalized_jsd_loss
    from distill.student.memory import GiB, gkd_loss_bytes

    torch.manual_seed(0)
    torch.set_num_threads(2)
    student = torch.randn(1, args.tokens, args.vocab, requires_grad=True)
    teacher = torch.randn(1, args.tokens, args.vocab)
    labels = torch.zeros(1, args.tokens, dtype=torch.long)
    labels[:, : args.tokens // 16] = -100  # a prompt
    rows = {}
    for name, fn in (("TRL generalized_jsd_loss", GKDTrainer.generalized_jsd_loss),
                     (f"chunked ({CHUNK_TOKENS} tokens)", chunked_generalized_jsd_loss)):
        rows[name] = (peak_beyond_inputs(fn, student, teacher, labels),
                      seconds(fn, student, teacher, labels, args.repeats))
    print(f"generalised JSD (beta 0.5), {args.tokens:,} tokens x {args.vocab:,} vocabulary, float32, forward + backward")
    print(f"{'loss':<28} {'peak beyond inputs':>24} {'seconds':>8}")
    for name, (per, secs) in rows.items():
        print(f"{name:<28} {per:>12.1f} B/token/entry {secs:>8.3f}")
    (trl_mem, trl_s), (ours_mem, ours_s) = rows.values()
    print(f"ratio (TRL / chunked): memory {trl_mem / ours_mem:.1f}x, time {trl_s / ours_s:.2f}x")

    tokens, vocab = 32768, 152064  # the 1.5B GKD recipe under ZeRO-3: bf16 logits, a bf16 loss
    ours = gkd_loss_bytes(tokens, vocab, "bfloat16", "ZeRO-3", 0.5)
    theirs = tokens * vocab * (2 * 2 + 2 * 15)  # TRL's measured 15 temporaries beyond the two logits (bf16 here)
    print(f"plan at {tokens:,} tokens x {vocab:,} (ZeRO-3, bf16): TRL {theirs / GiB:.1f} GiB, chunked "
          f"{ours / GiB:.1f} GiB ({MIXTURE_CHUNK_TEMPORARIES} temporaries x {CHUNK_TOKENS} tokens + 3 logits-sized)")


if __name__ == "__main__":
    main()
