"""``sdpa_varlen``: SDPA that attends within each packed document, for machines without flash-attention.

Why: with padding-free packing, transformers' ``sdpa`` keeps documents apart with a block-diagonal mask over the
whole packed row, but the kernel still scores every query against every key of the row: a 2048-token bin of six
traces pays for 2048^2 pairs instead of the ~6 x 340^2 the documents need, which on a CPU (or a GPU without
flash-attn) eats most of what packing saves. flash-attention's varlen kernel avoids that on GPUs;
this does the same with plain SDPA: when the batch carries the document boundaries TRL's padding-free collator
computes (``cu_seq_lens_q``), it runs causal SDPA per document and concatenates. Anything else (padded batches,
generation with a cache) goes to the stock ``sdpa`` path unchanged, so the name is safe to use everywhere.
"""

from __future__ import annotations

from typing import Any

NAME = "sdpa_varlen"
_registered = False


def sdpa_varlen_forward(module: Any, query, key, value, attention_mask, dropout: float = 0.0,
                        scaling: float | None = None, is_causal: bool | None = None, **kwargs: Any):
    """Same contract as transformers.integrations.sdpa_attention.sdpa_attention_forward: (B, H, N, D) in,
    ((B, N, H, D), None) out."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1 or query.shape[2] != key.shape[2] or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    bounds = cu.tolist()
    parts = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            parts.append(torch.nn.functional.scaled_dot_product_attention(
                query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], is_causal=True,
                dropout_p=dropout if module.training else 0.0, scale=scaling))
    out = torch.cat(parts, dim=2)
    if out.shape[2] < query.shape[2]:  # padding after the last document (pad_to_multiple_of): zeros, no loss there
        pad = query.new_zeros(*query.shape[:2], query.shape[2] - out.shape[2], query.shape[3])
        out = torch.cat([out, pad], dim=2)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make ``attn_implementation="sdpa_varlen"`` known to transformers (idempotent); returns the name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

        AttentionInterface.register(NAME, sdpa_varlen_forward)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # padded batches still get their padding mask
        _registered = True
    return NAME
