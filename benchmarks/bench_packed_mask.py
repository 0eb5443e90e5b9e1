"""Peak memory and time of one training step on a long packed row: with and without the N x N mask.

Why: for a padding-free packed row transformers builds a block-diagonal boolean mask over the whole row, N x N
(1 GiB at 32k tokens, more while it is composed), on every forward. ``sdpa_varlen`` attends per trace from the
boundaries and never reads it, so its mask function (``attention.varlen_mask``) builds none. The baseline here is
the same model and row with transformers' ``sdpa_mask`` put back for ``sdpa_varlen``: the one thing that differs is
the mask. Memory is the process's peak resident set during the step (Linux: the kernel's high-water mark, reset
before each step), so it counts the mask's temporaries too. The model is small (2 layers, hidden 128) so the mask
shows against the rest as it would beside a real student's activations per layer.

    python benchmarks/bench_packed_mask.py [--tokens 16384] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_varlen_attention import trace_lengths  # noqa: E402


def peak_rss_reset() -> None:
    """Reset the kernel's peak-RSS mark for this process (Linux's clear_refs "5")."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def proc_status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (``VmHWM``: peak resident set, ``VmRSS``: now), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def step(model, tokens: int, seed: int) -> tuple[float, int]:
    """One forward + backward on a fresh packed row as TRL's padding-free collator passes it: (seconds, peak bytes
    above the resident set before the step)."""
    import torch

    lengths = trace_lengths(tokens, seed)
    bounds = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    ids = torch.randint(3, model.config.vocab_size, (1, tokens))
    batch = {"input_ids": ids, "labels": ids, "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
             "cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds, "max_length_q": max(lengths),
             "max_length_k": max(lengths)}
    before = proc_status_bytes("VmRSS")
    peak_rss_reset()
    start = time.perf_counter()
    model(**batch).loss.backward()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds, proc_status_bytes("VmHWM") - before


def main(argv: list[str] | None = None) -> None:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    from distill.student import attention

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    name = attention.register()
    config = Qwen2Config(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=a.tokens, use_cache=False)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=name).train()
    variants = {"transformers' block mask": sdpa_mask, "no mask (varlen_mask)": attention.varlen_mask}
    results: dict[str, list[tuple[float, int]]] = {v: [] for v in variants}
    try:
        for i in range(a.steps + 1):  # step 0 warms up both; variants alternate so drift hits both alike
            for label, mask_fn in variants.items():
                ALL_MASK_ATTENTION_FUNCTIONS.register(name, mask_fn)
                r = step(model, a.tokens, seed=i)
                if i:
                    results[label].append(r)
    finally:
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, attention.varlen_mask)
    print(f"cpu (torch {torch.__version__}), packed row of {a.tokens} tokens, Qwen2 2 layers hidden 128, "
          f"{a.steps} steps, forward + backward")
    base = None
    for label, rs in results.items():
        seconds = sorted(s for s, _ in rs)[len(rs) // 2]
        peak = max(m for _, m in rs)
        base = base or (seconds, peak)
        print(f"{label:26s} {seconds * 1e3:8.0f} ms/step (x{base[0] / seconds:.2f})  "
              f"peak +{peak / 2**20:7.0f} MiB (x{base[1] / max(peak, 1):.2f} less)")


if __name__ == "__main__":
    main()
