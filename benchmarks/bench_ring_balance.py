"""Ring attention's work per GPU at a trace length padded to 2 x the ring against the length as it comes.

Why: under context parallelism (the 70B recipe: FSDP2 + a ring of 2) torch balances the causal attention with a
head-and-tail split, each rank taking one chunk from the front of the trace and one from the back, but only when
the length divides into 2 x the ring size; for any other length it skips the balancer silently, and the rank
holding the tail attends to the whole head as well. distributed.pad_to_multiple_of pads every batch to that
multiple. This runs one causal attention (forward and backward) of a trace through torch's ring on 2 processes
over gloo, each ring step on the CPU's attention kernel (tests/ring_attention_on_cpu.py, as the tests run it),
once at a length padded by our rule (``--tokens`` rounded up to 4) and once at ``--tokens`` + 2, which divides
by the ring but not by 2 x the ring: the lengths a trace of either length gets with and without the padding.
Per rank it prints the time spent in the attention kernel; the ring waits for its slowest rank, so the step's
wall time follows the busier one.

    python benchmarks/bench_ring_balance.py [--tokens 16384] [--heads 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def timed(kernel, spent: list[float]):
    def call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return kernel(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start
    return call


def worker(rank: int, port: int, lengths: list[int], heads: int, repeats: int, results) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.experimental import context_parallel

    from tests import ring_attention_on_cpu as cpu_ring

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("cp",))
    spent = [0.0]
    cpu_ring.kernels.update({name: timed(k, spent) for name, k in cpu_ring.kernels.items()})
    for length in lengths:
        torch.manual_seed(0)
        kernel_s, wall_s = [], []
        for _ in range(repeats):
            q, k, v = (torch.randn(1, heads, length, 64) for _ in range(3))
            dist.barrier()
            spent[0], start = 0.0, time.perf_counter()
            with context_parallel(mesh, buffers=[q, k, v], buffer_seq_dims=[2, 2, 2], no_restore_buffers={q, k, v}):
                q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
                F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
            dist.barrier()
            kernel_s.append(spent[0])
            wall_s.append(time.perf_counter() - start)
        results[(rank, length)] = (min(kernel_s), min(wall_s))
    dist.destroy_process_group()


def main() -> None:
    import torch.multiprocessing as mp

    from tests.conftest import free_port

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    padded = -(-args.tokens // 4) * 4
    unpadded = padded + 2  # divides by the ring (2), not by 2 x the ring: torch skips its balancer
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = mp.Manager().dict()
    mp.spawn(worker, args=(free_port(), [padded, unpadded], args.heads, args.repeats, results), nprocs=2)

    print(f"ring of 2, one trace, {args.heads} heads x 64, causal attention forward + backward, "
          f"best of {args.repeats}; seconds in the attention kernel per rank, step wall time")
    walls = {}
    for length, label in ((unpadded, "as it comes (baseline)"), (padded, "padded to 2 x ring")):
        k0, w0 = results[(0, length)]
        k1, w1 = results[(1, length)]
        walls[length] = max(w0, w1)
        print(f"  {length:>6} tokens, {label:<22} rank 0 {k0:6.2f} s  rank 1 {k1:6.2f} s  "
              f"busier/other {max(k0, k1) / min(k0, k1):.2f}x  step {walls[length]:.2f} s")
    print(f"step time, unbalanced / balanced: {walls[unpadded] / walls[padded]:.2f}x")


if __name__ == "__main__":
    main()
