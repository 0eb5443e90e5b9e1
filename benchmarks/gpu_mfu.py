"""MFU of one training step of a Qwen2.5-1.5B-shaped student at 16k tokens on one GPU.

Why: the R1-Distill-Qwen-1.5B student trains on 16k-32k-token traces; whether a setup (attention kernel, bf16,
checkpointing, packing) uses the GPU well is answered by model FLOPs utilisation, not tokens/s. The model is the
real Qwen2.5-1.5B architecture (its config, random weights: nothing is downloaded), trained with AdamW on one
sequence of ``--tokens`` tokens (optionally ``--docs`` packed documents with restarting position ids). FLOPs follow
distill/student/flops.py (PaLM convention, causal attention), which tests/test_student_config.py checks against
torch's FlopCounterMode. Peak: H200 dense bf16, 989 TFLOPS.

    python benchmarks/gpu_mfu.py                      # on a GPU: times 5 steps after 2 warm-up steps
    python benchmarks/gpu_mfu.py --dry-run            # anywhere: the FLOPs arithmetic only
    python benchmarks/gpu_mfu.py --docs 4 --gradient-checkpointing
    python benchmarks/gpu_mfu.py --liger --sdpa-backend cudnn   # liger-kernel layers + fused linear CE; cuDNN SDPA

``--liger`` applies liger-kernel's RMSNorm, SwiGLU and RoPE kernels and its fused linear cross-entropy (the loss
without materialising 16k x 152k logits; in training TRL's own fused LM head plays that part).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from distill.student.flops import (H200_BF16_DENSE_TFLOPS, QWEN25_1_5B, Shape, forward_flops,  # noqa: E402
                                   matmul_params, mfu, training_flops)


def doc_lengths(tokens: int, docs: int) -> list[int]:
    base, extra = divmod(tokens, docs)
    return [base + (1 if i < extra else 0) for i in range(docs)]


def plan(tokens: int = 16384, docs: int = 1, config: dict | None = None) -> dict:
    """The FLOPs of one step, without touching a GPU (also what the CPU test checks)."""
    from transformers import Qwen2Config

    shape = Shape.of(Qwen2Config(**(config or QWEN25_1_5B)))
    lengths = doc_lengths(tokens, docs)
    step = training_flops(shape, lengths)
    return {"tokens": tokens, "docs": docs, "matmul_params": matmul_params(shape),
            "forward_flops": forward_flops(shape, lengths), "train_flops_per_step": step,
            "train_flops_per_token": step / tokens,
            "seconds_per_step_at_40pct_mfu": step / (0.4 * H200_BF16_DENSE_TFLOPS * 1e12)}


SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION"}


def measure(tokens: int, docs: int, steps: int, warmup: int, checkpointing: bool, attn: str, peak: float,
            liger: bool = False, sdpa_backend: str = "auto", config: dict | None = None,
            device: str = "cuda") -> dict:
    """Time ``steps`` optimiser steps. ``config``/``device`` exist so a CPU test can run this same code on a tiny
    model (tests/test_student_config.py); the figure is only meaningful on a GPU."""
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from distill.student.efficiency import resolve_attn_implementation

    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no GPU: run with --dry-run for the FLOPs arithmetic")
    impl = resolve_attn_implementation(attn, packed=docs > 1, cuda=cuda)
    torch.manual_seed(0)
    config = Qwen2Config(**(config or QWEN25_1_5B))
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=impl,
                                                 dtype=torch.bfloat16 if cuda else torch.float32)
    if liger:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model, fused_linear_cross_entropy=True)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=cuda)
    lengths = doc_lengths(tokens, docs)
    ids = torch.randint(0, config.vocab_size, (1, tokens), device=device)
    position_ids = torch.cat([torch.arange(n, device=device) for n in lengths]).unsqueeze(0)
    batch = {"input_ids": ids, "labels": ids, "position_ids": position_ids}
    if docs > 1 and (impl.startswith("flash") or impl == "sdpa_varlen"):  # boundaries, as TRL's collator passes them
        starts = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32, device=device)
        batch.update(cu_seq_lens_q=starts, cu_seq_lens_k=starts, max_length_q=max(lengths), max_length_k=max(lengths))

    def step() -> float:
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    backend = contextlib.nullcontext()
    if sdpa_backend != "auto":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[sdpa_backend])])
    with backend:
        for _ in range(warmup):
            step()
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            loss = step()
        sync()
    seconds = (time.perf_counter() - start) / steps
    shape = Shape.of(config)
    flops = training_flops(shape, lengths)
    hw = flops + (forward_flops(shape, lengths) if checkpointing else 0)  # recomputed forward
    memory = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    return {"device": torch.cuda.get_device_name() if cuda else "cpu", "attn_implementation": impl,
            "sdpa_backend": sdpa_backend,
            "liger": liger, "gradient_checkpointing": checkpointing, "torch": torch.__version__, "loss": round(loss, 4),
            "tokens": tokens, "docs": docs, "seconds_per_step": round(seconds, 6),
            "tokens_per_s": round(tokens / seconds), "model_tflops_per_s": round(flops / seconds / 1e12, 1),
            "mfu": round(mfu(flops, seconds, peak), 4), "hfu": round(mfu(hw, seconds, peak), 4),
            "peak_tflops": peak, "max_memory_gib": round(memory, 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--docs", type=int, default=1, help="packed documents in the sequence")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--attn", default="auto")
    p.add_argument("--liger", action="store_true", help="liger-kernel layers and fused linear cross-entropy")
    p.add_argument("--sdpa-backend", default="auto", choices=["auto", *SDPA_BACKENDS])
    p.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS)
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args(argv)
    info = plan(a.tokens, a.docs)
    print(f"Qwen2.5-1.5B shape: {info['matmul_params'] / 1e9:.3f}B matmul params, "
          f"{info['train_flops_per_token'] / 1e9:.2f} GFLOPs/token (train, causal), "
          f"{info['train_flops_per_step'] / 1e12:.1f} TFLOPs per {a.tokens}-token step")
    if a.dry_run:
        print(json.dumps(info))
        return
    res = measure(a.tokens, a.docs, a.steps, a.warmup, a.gradient_checkpointing, a.attn, a.peak_tflops, a.liger,
                  a.sdpa_backend)
    print(f"MFU {res['mfu'] * 100:.1f}% of {a.peak_tflops:.0f} TFLOPS ({res['model_tflops_per_s']} TFLOPS, "
          f"{res['tokens_per_s']} tokens/s, {res['seconds_per_step']} s/step, {res['max_memory_gib']} GiB)")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
