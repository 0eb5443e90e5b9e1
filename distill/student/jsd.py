"""TRL's generalised JSD loss for GKD, computed a chunk of tokens at a time so it fits at R1 trace lengths.

Why: TRL 1.16's ``GKDTrainer.generalized_jsd_loss`` builds every intermediate over the whole batch at once:
log-softmaxes, the stacked mixture, two KL tensors, their weighted sum. That is 15 vocabulary-wide float32 tensors
per token beyond the two logits inputs (torch's memory profiler, benchmarks/bench_gkd_loss_memory.py):
60 bytes x 152,064 = 8.7 MiB per token of a Qwen vocabulary, 69.6 GiB at 8k tokens, more than the rest of a 1.5B
student's step together. The loss is a sum over tokens, so nothing requires that: :class:`ChunkedJSD` computes
the same sum over ``CHUNK_TOKENS`` positions at a time, and takes each chunk's gradient with respect to the
student's logits right there (as Liger's fused losses do on GPUs), keeping one gradient buffer the size of the
student's logits. The peak beyond the inputs drops from 15 vocabulary-wide tensors per token to one (the
gradient buffer) plus 12 per token of one chunk (``python benchmarks/bench_gkd_loss_memory.py``; the tests check
the loss and its gradient equal TRL's, and the memory with torch's profiler).

The per-chunk arithmetic is TRL's own formula, in the same dtypes (under autocast, log_softmax runs in float32
either way), so a run's loss curve does not depend on whether the chunked loss is used.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

CHUNK_TOKENS = 512  # 512 x 152,064 x 12 float32 temporaries: 3.5 GiB at a time, against 69.6 GiB for 8k tokens
# vocabulary-wide temporaries per chunk token at the peak, by beta (0: forward KL, 1: reverse KL, between: the
# mixture), in the loss's dtype; tests/test_student_memory.py measures them with torch's memory profiler
CHUNK_TEMPORARIES = {0.0: 5, 1.0: 6}
MIXTURE_CHUNK_TEMPORARIES = 12


def jsd_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None, beta: float,
            temperature: float) -> torch.Tensor:
    """The summed generalised JSD of (tokens, vocab) logits over the masked tokens: TRL's formula (GKD paper eq. 1,
    beta 0 forward KL, 1 reverse KL), before its reduction."""
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=-1)
    if beta == 0:
        jsd = F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True)
    elif beta == 1:
        jsd = F.kl_div(teacher_log_probs, student_log_probs, reduction="none", log_target=True)
    else:
        b = torch.tensor(beta, dtype=student_log_probs.dtype, device=student_log_probs.device)
        mixture = torch.logsumexp(torch.stack([student_log_probs + torch.log1p(-b), teacher_log_probs + torch.log(b)]),
                                  dim=0)
        jsd = b * F.kl_div(mixture, teacher_log_probs, reduction="none", log_target=True) + \
            (1 - b) * F.kl_div(mixture, student_log_probs, reduction="none", log_target=True)
    if mask is not None:
        jsd = jsd[mask]
    return jsd.sum()


class ChunkedJSD(torch.autograd.Function):
    """The summed JSD over (batch, tokens, vocab) logits, forward and gradient chunk by chunk.

    The gradient with respect to the student's logits is taken in the forward pass, one chunk at a time, into a
    buffer shaped like them; backward scales it. So no chunk's intermediates outlive its iteration, and the graph
    keeps neither the logits nor any vocabulary-wide temporary."""

    @staticmethod
    def forward(ctx: Any, student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None,
                beta: float, temperature: float, chunk: int) -> torch.Tensor:
        grad = torch.zeros_like(student_logits) if student_logits.requires_grad else None
        total = torch.zeros((), dtype=torch.promote_types(student_logits.dtype, torch.float32),
                            device=student_logits.device)
        for row in range(student_logits.shape[0]):
            for start in range(0, student_logits.shape[1], chunk):
                piece = slice(start, start + chunk)
                s = student_logits[row, piece].detach().requires_grad_(grad is not None)
                with torch.enable_grad():
                    part = jsd_sum(s, teacher_logits[row, piece], None if mask is None else mask[row, piece], beta,
                                   temperature)
                if grad is not None:
                    grad[row, piece] = torch.autograd.grad(part, s)[0]
                total += part.detach().to(total.dtype)
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad.mul_(grad_output.to(grad.dtype)), None, None, None, None, None


def chunked_generalized_jsd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                                 labels: torch.Tensor | None = None, beta: float = 0.5, temperature: float = 1.0,
                                 reduction: str = "batchmean", num_items_in_batch: Any = None,
                                 chunk: int = CHUNK_TOKENS) -> torch.Tensor:
    """Drop-in for ``GKDTrainer.generalized_jsd_loss`` (same arguments, same reductions, same value and gradient)
    that never holds more than ``chunk`` tokens of the loss's vocabulary-wide intermediates."""
    mask = labels != -100 if labels is not None else None
    total = ChunkedJSD.apply(student_logits, teacher_logits, mask, float(beta), float(temperature), chunk)
    if num_items_in_batch is not None:  # normalised by the global token count (gradient accumulation, DP)
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch
    masked = int(mask.sum()) if mask is not None else student_logits.shape[0] * student_logits.shape[1]
    if reduction == "batchmean":
        return total / (max(masked, 1) if mask is not None else max(student_logits.shape[0], 1))
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / (masked * student_logits.shape[-1])
    raise ValueError(f"reduction {reduction!r}: the chunked loss returns a reduced value only")
