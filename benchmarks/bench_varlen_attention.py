"""Attention over a packed row of R1-shaped traces, forward + backward: the ways ``sdpa_varlen`` can run it.

Why: padding-free packing is only a win if attention stays inside each trace without paying for the whole row.
transformers' stock ``sdpa`` (the baseline here) keeps traces apart with a block-diagonal mask but scores every
query against every key of the row. ``sdpa_varlen`` (distill/student/attention.py) instead runs
- torch's flash varlen kernel, one launch for the row (CUDA, bf16), or
- causal SDPA per trace in turn, with cuDNN attention kept out on a GPU: cuDNN plans a kernel per new sequence
  shape, and packed trace lengths are nearly all new. The loop with cuDNN allowed is measured too, to show it.
Each step draws fresh trace lengths (as training does), from the long-tailed R1 distribution scaled to the row.
The shapes are one Qwen2.5-1.5B attention layer (12 query heads, 2 key/value heads, head size 128).

    python benchmarks/bench_varlen_attention.py [--tokens N] [--steps 5] [--device cuda|cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distill.student.miniature import long_tail_factors  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM = 12, 2, 128


def trace_lengths(tokens: int, seed: int) -> list[int]:
    """Trace lengths filling ``tokens``: R1's shape (median 1/8 of the cap) with the row as the 32k cap."""
    lengths, step = [], 0
    while sum(lengths) < tokens:
        lengths += long_tail_factors(64, median=tokens / 8, cap=tokens, seed=seed * 1000 + step)
        step += 1
    out, total = [], 0
    for n in lengths:
        n = min(n, tokens - total)
        if n:
            out.append(n)
            total += n
    return out


def run(path: str, tokens: int, steps: int, device: str) -> dict:
    """Seconds per forward + backward of one layer's attention on a fresh packed row each step."""
    import torch

    from distill.student import attention
    from transformers.integrations.sdpa_attention import repeat_kv

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    elapsed, docs = 0.0, 0
    for step in range(steps + 1):  # step 0 warms up
        lengths = trace_lengths(tokens, seed=step)
        docs += len(lengths) if step else 0
        q = torch.randn(1, HEADS, tokens, HEAD_DIM, device=device, dtype=dtype, requires_grad=True)
        kv = [torch.randn(1, KV_HEADS, tokens, HEAD_DIM, device=device, dtype=dtype, requires_grad=True)
              for _ in range(2)]
        bounds = [0] + torch.tensor(lengths).cumsum(0).tolist()
        cu = torch.tensor(bounds, dtype=torch.int32, device=device)
        sync()
        start = time.perf_counter()
        if path == "varlen kernel":
            out = attention.varlen_kernel_attention(q, *kv, cu, max(lengths), None)
        else:
            k, v = (repeat_kv(t, HEADS // KV_HEADS) for t in kv)
            if path == "stock sdpa, block mask":
                doc = torch.repeat_interleave(torch.arange(len(lengths), device=device),
                                              torch.tensor(lengths, device=device))
                mask = (doc[:, None] == doc[None, :]).tril()
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            else:
                allowed = contextlib.nullcontext() if path == "per trace, cuDNN allowed" else \
                    attention.without_cudnn(device == "cuda")  # as sdpa_varlen runs it
                with allowed:
                    out = attention.per_document_attention(q, k, v, bounds, 0.0, None)
        out.float().square().mean().backward()
        sync()
        if step:
            elapsed += time.perf_counter() - start
    return {"path": path, "seconds_per_step": elapsed / steps, "traces_per_row": docs / steps}


def main(argv: list[str] | None = None) -> None:
    import torch

    from distill.student.attention import varlen_kernel

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tokens", type=int, default=None, help="packed row length (16384 on a GPU, 2048 on a CPU)")
    p.add_argument("--steps", type=int, default=5)
    a = p.parse_args(argv)
    tokens = a.tokens or (16384 if a.device == "cuda" else 2048)
    paths = ["stock sdpa, block mask", "per trace"]
    if a.device == "cuda":
        if varlen_kernel() is not None:
            paths.append("varlen kernel")
        paths.append("per trace, cuDNN allowed")  # last: if it plans per length it is the slow one
    print(f"{a.device} ({torch.cuda.get_device_name() if a.device == 'cuda' else 'torch ' + torch.__version__}), "
          f"row of {tokens} tokens, {a.steps} steps, fresh trace lengths each step")
    base, failed = None, []
    for path in paths:
        try:  # one path failing (a kernel this torch lacks) must not cost the others' figures on a borrowed GPU
            r = run(path, tokens, a.steps, a.device)
        except Exception as exc:  # noqa: BLE001 - reported, and the exit status says so
            failed.append(path)
            print(f"{path:28s} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
            continue
        if base is None:
            base, base_path = r["seconds_per_step"], path
        print(f"{path:28s} {r['seconds_per_step'] * 1e3:9.1f} ms/step  {tokens / r['seconds_per_step']:>12,.0f} tok/s  "
              f"x{base / r['seconds_per_step']:.2f} vs {base_path}  ({r['traces_per_row']:.1f} traces/row)")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
