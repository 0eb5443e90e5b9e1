"""Real-token fraction of training batches on an R1-like length distribution: packed (bfd) vs padded.

Why: R1 traces are long-tailed (median ~4k tokens, tail to the 32k cut-off). Padding a batch to its longest trace
wastes most of the compute; TRL's best-fit-decreasing packing (``packing: true``, padding-free) puts whole traces
into max_length bins with per-trace position ids. This measures, with TRL's own ``pack_dataset`` on token
sequences drawn from a log-normal length distribution scaled down 16x (median 256, cap 2048 = 32k/16):

- padded: real / (batch x longest-in-batch) over shuffled batches (what SFT without packing computes on), and the
  same with length-grouped batches (the usual mitigation);
- packed: real / (bins x max_length), i.e. how full the bins are. A padding-free batch itself has no padding at all
  (its rows are concatenated), so this is the fraction of the fixed per-step token budget that carries data.

    python benchmarks/bench_packing.py [N_TRACES] [--scale 16] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

from distill.student.miniature import long_tail_factors  # noqa: E402

R1_MEDIAN, R1_CAP = 4096, 32768


def lengths(n: int, scale: int, seed: int = 0) -> list[int]:
    return long_tail_factors(n, median=R1_MEDIAN / scale, cap=R1_CAP / scale, seed=seed)


def padded_fraction(lens: list[int], batch: int, grouped: bool = False, seed: int = 0) -> float:
    order = sorted(lens) if grouped else random.Random(seed).sample(lens, len(lens))
    real = padded = 0
    for i in range(0, len(order), batch):
        b = order[i:i + batch]
        real += sum(b)
        padded += len(b) * max(b)
    return real / padded


def packed_stats(lens: list[int], max_length: int) -> dict:
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    ds = Dataset.from_dict({"input_ids": [[1] * n for n in lens]})
    packed = pack_dataset(ds, max_length, strategy="bfd")
    bins = [sum(s) for s in packed["seq_lengths"]]
    kept = sum(bins)
    return {"bins": len(bins), "fill": kept / (len(bins) * max_length), "truncated": 1 - kept / sum(lens),
            "examples_per_bin": len(lens) / len(bins)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("n", type=int, nargs="?", default=20000)
    p.add_argument("--scale", type=int, default=16, help="divide R1's lengths by this (CPU-sized)")
    p.add_argument("--batch", type=int, default=8, help="traces per padded batch")
    a = p.parse_args(argv)
    lens = lengths(a.n, a.scale)
    max_length = R1_CAP // a.scale
    q = statistics.quantiles(lens, n=100)
    print(f"{a.n} traces, lengths /{a.scale}: median {statistics.median(lens):.0f}, mean {statistics.mean(lens):.0f}, "
          f"p90 {q[89]:.0f}, p99 {q[98]:.0f}, max {max(lens)} (max_length {max_length})")
    pad = padded_fraction(lens, a.batch)
    grouped = padded_fraction(lens, a.batch, grouped=True)
    pk = packed_stats(lens, max_length)
    print(f"padded batches of {a.batch} (shuffled):   real-token fraction {pad * 100:5.1f}%")
    print(f"padded batches of {a.batch} (length-grouped): real-token fraction {grouped * 100:5.1f}%")
    print(f"packed bfd bins of {max_length}:           real-token fraction {pk['fill'] * 100:5.1f}%  "
          f"({pk['examples_per_bin']:.1f} traces/bin, {pk['truncated'] * 100:.2f}% of tokens truncated)")
    print(f"ratio packed / padded (shuffled): {pk['fill'] / pad:.2f}x   goal: packed >= 98%: "
          f"{'met' if pk['fill'] >= 0.98 else 'NOT met'}")


if __name__ == "__main__":
    main()
