"""Model FLOPs of a decoder-only transformer step, for MFU (model FLOPs utilisation).

Why: "tokens/s" does not say whether a training setup is good; MFU does: achieved model FLOPs per second over the
accelerator's peak. The convention is PaLM's (Chowdhery et al., appendix B): count the matmuls of the model once
forward and twice backward (3x forward), ignore recomputation from gradient checkpointing, and count attention
over the keys each query really sees (causal: token t sees t+1 keys; packed documents see only their own).

The arithmetic is checked against torch's FlopCounterMode on a tiny model (tests/test_student_config.py), so the
figure benchmarks/gpu_mfu.py prints for a 1.5B model on an H200 rests on counted, not assumed, FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA H200 SXM, dense bf16 tensor-core peak (same die as H100 SXM)
H100_BF16_DENSE_TFLOPS = 989.0

# Qwen/Qwen2.5-1.5B (and -Math-1.5B, the R1-Distill-Qwen-1.5B base): its config.json, so no download is needed.
QWEN25_1_5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                   num_key_value_heads=2, vocab_size=151936, max_position_embeddings=131072, rope_theta=1_000_000.0,
                   tie_word_embeddings=True, rms_norm_eps=1e-6)


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, config: Any) -> "Shape":
        """From a transformers config (Qwen2/Llama field names)."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(hidden=config.hidden_size, intermediate=config.intermediate_size, layers=config.num_hidden_layers,
                   heads=heads, kv_heads=getattr(config, "num_key_value_heads", None) or heads, head_dim=head_dim,
                   vocab=config.vocab_size)


def matmul_params(s: Shape) -> int:
    """Weights that take part in a matmul per token: attention and MLP projections of every layer, plus the LM
    head (the input embedding is a lookup, not a matmul)."""
    attn = s.hidden * s.heads * s.head_dim * 2 + s.hidden * s.kv_heads * s.head_dim * 2  # q, o ; k, v
    mlp = 3 * s.hidden * s.intermediate  # gate, up, down (SwiGLU)
    return s.layers * (attn + mlp) + s.hidden * s.vocab


def attention_pairs(doc_lengths: Iterable[int], causal: bool = True) -> int:
    """Query-key pairs scored: sum over documents of n(n+1)/2 (causal) or n^2 (full)."""
    return sum(n * (n + 1) // 2 if causal else n * n for n in doc_lengths)


def forward_flops(s: Shape, doc_lengths: Iterable[int], causal: bool = True) -> int:
    """Forward matmul FLOPs (2 per multiply-add) for one sequence made of ``doc_lengths`` packed documents."""
    lengths = list(doc_lengths)
    tokens = sum(lengths)
    dense = 2 * matmul_params(s) * tokens
    attn = 2 * 2 * s.layers * s.heads * s.head_dim * attention_pairs(lengths, causal)  # QK^T and AV
    return dense + attn


def training_flops(s: Shape, doc_lengths: Iterable[int], causal: bool = True) -> int:
    """Forward + backward (2x forward): the model FLOPs of one optimisation step on these tokens."""
    return 3 * forward_flops(s, doc_lengths, causal)


def mfu(flops: float, seconds: float, peak_tflops: float = H200_BF16_DENSE_TFLOPS, devices: int = 1) -> float:
    """Achieved model FLOPs per second as a fraction of the devices' peak."""
    return flops / seconds / (peak_tflops * 1e12 * devices)
