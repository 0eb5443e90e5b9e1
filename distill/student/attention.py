"""``sdpa_varlen``: attention that stays within each packed document, for machines without flash-attn.

Why: with padding-free packing, transformers' ``sdpa`` keeps documents apart with a block-diagonal mask over the
whole packed row, but the kernel still scores every query against every key of the row: a 2048-token bin of six
traces pays for 2048^2 pairs instead of the ~6 x 340^2 the documents need, which on a CPU (or a GPU without
flash-attn) eats most of what packing saves. When the batch carries the document boundaries TRL's padding-free
collator computes (``cu_seq_lens_q``), this attends per document instead:

- on a GPU in half precision, with torch's own flash varlen kernel (``torch.nn.attention.varlen``): one launch per
  layer for the whole row, no host sync, no per-length kernel plans;
- otherwise (CPU, float32, a torch without the kernel), causal SDPA over each document in turn. On a GPU that loop
  keeps cuDNN attention out: cuDNN builds an execution plan per new sequence shape (tens to hundreds of ms), and
  trace lengths are nearly all distinct, so a loop over them would spend the run planning.

Anything else (padded batches, generation with a cache) goes to the stock ``sdpa`` path unchanged, so the name is
safe to use everywhere.

The block-diagonal mask transformers would build for a packed row is skipped too (:func:`varlen_mask`): this
attention never reads it, and it is an N x N tensor per forward (1 GiB of bools at 32k tokens, several times that
while it is built). Where the collator's boundaries are missing, they are read from the restarting position ids
instead, so skipping the mask never lets documents see each other.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from typing import Any, Callable

NAME = "sdpa_varlen"
_registered = False
log = logging.getLogger(__name__)


def causal_kwargs(kernel: Callable[..., Any]) -> dict[str, Any] | None:
    """The keyword arguments that make a torch varlen kernel causal (and share key/value heads), or None.

    The first torch releases took ``is_causal=True``; later ones a ``window_size=(-1, 0)``. GQA is passed through
    ``enable_gqa`` where the kernel takes it, so the key/value heads are not copied."""
    params = inspect.signature(kernel).parameters
    if "window_size" in params:
        kwargs: dict[str, Any] = {"window_size": (-1, 0)}
    elif "is_causal" in params:
        kwargs = {"is_causal": True}
    else:
        return None
    if "enable_gqa" in params:
        kwargs["enable_gqa"] = True
    return kwargs


@functools.lru_cache(maxsize=1)
def varlen_kernel() -> tuple[Callable[..., Any], dict[str, Any]] | None:
    """torch's flash varlen kernel (torch.nn.attention.varlen) with its causal arguments, or None without one."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    kwargs = causal_kwargs(varlen_attn)
    return None if kwargs is None else (varlen_attn, kwargs)


def kernel_dtype(query: Any, dropout: float, training: bool) -> Any:
    """The half precision the varlen kernel would run this query in, or None where it does not apply.

    The kernel runs on CUDA in fp16/bf16, without dropout (as torch exposes it), for head sizes up to 256. Under
    autocast with float32 master weights (how full fine-tuning trains, model.weights_dtype) the query arrives in
    float32 (RoPE multiplies in the residual stream's dtype), so it runs in the autocast dtype: what SDPA does by
    itself there, and what transformers' flash-attention path does too."""
    import torch

    if not query.is_cuda or query.shape[-1] > 256 or (training and dropout > 0) or varlen_kernel() is None:
        return None
    if query.dtype in (torch.float16, torch.bfloat16):
        return query.dtype
    if query.dtype == torch.float32 and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return None


def varlen_kernel_attention(query, key, value, cu, max_length: int, scaling: float | None, dtype: Any = None):
    """(1, H, N, D) query and (1, H_kv, N, D) key/value, boundaries ``cu`` (int32, ends at N) -> (1, N, H, D),
    computed in ``dtype`` (default: the query's).

    TRL's collator ends ``cu`` at the row's length (padding tokens are one-token documents), so every position is
    written: no uninitialised tail reaches the next layer or the weight gradients."""
    import torch

    kernel, causal = varlen_kernel()
    if query.shape[1] != key.shape[1] and "enable_gqa" not in causal:
        from transformers.integrations.sdpa_attention import repeat_kv

        groups = query.shape[1] // key.shape[1]
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    dtype = dtype or query.dtype
    q, k, v = (t[0].transpose(0, 1).to(dtype).contiguous() for t in (query, key, value))  # (N, H, D)
    extra = {}
    if takes_scale(kernel):
        extra["scale"] = scaling
    elif scaling is not None:  # torch 2.9's kernel has no scale: fold the model's into the query (default 1/sqrt(D))
        q = q * (scaling * q.shape[-1] ** 0.5)
    out = kernel(q, k, v, cu.to(torch.int32), cu.to(torch.int32), max_length, max_length, **extra, **causal)
    return out.unsqueeze(0)


@functools.lru_cache(maxsize=None)
def takes_scale(kernel: Callable[..., Any]) -> bool:
    """Whether a torch varlen kernel takes ``scale`` (torch 2.9's first release did not: a TypeError every step)."""
    return "scale" in inspect.signature(kernel).parameters


def without_cudnn(device_is_cuda: bool):
    """SDPA backends minus cuDNN on a GPU (see the module docstring); nothing to restrict on a CPU."""
    if not device_is_cuda:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def per_document_attention(query, key, value, bounds: list[int], dropout: float, scaling: float | None):
    """Causal SDPA over each document of a (1, H, N, D) row in turn -> (1, N, H, D); key/value have all H heads.
    The SDPA backend is the caller's choice (sdpa_varlen_forward keeps cuDNN out with :func:`without_cudnn`).

    Positions after the last boundary (padding to a multiple) get zeros: they carry no loss."""
    import torch

    parts = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            parts.append(torch.nn.functional.scaled_dot_product_attention(
                query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], is_causal=True,
                dropout_p=dropout, scale=scaling))
    out = torch.cat(parts, dim=2)
    if out.shape[2] < query.shape[2]:
        pad = query.new_zeros(*query.shape[:2], query.shape[2] - out.shape[2], query.shape[3])
        out = torch.cat([out, pad], dim=2)
    return out.transpose(1, 2).contiguous()


def packed_boundaries(kwargs: dict[str, Any], length: int):
    """(cu, max_length) for a packed (1, N) row, or None for a row that is one sequence.

    The collator's ``cu_seq_lens_q``/``max_length_q`` when it passed them (TRL's padding-free collator does); else
    read from position ids that restart, as transformers' flash path does (``prepare_fa_kwargs_from_position_ids``),
    because :func:`varlen_mask` gave the row no mask to keep its documents apart."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None:
        max_length = kwargs.get("max_length_q")
        return cu, None if max_length is None else int(max_length)
    position_ids = kwargs.get("position_ids")
    if position_ids is None or position_ids.shape[-1] != length or position_ids.numel() != length or length < 2:
        return None
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    (cu, _), (max_length, _) = prepare_fa_kwargs_from_position_ids(position_ids)
    return (cu, int(max_length)) if len(cu) > 2 else None


_kernel_failed = False


def sdpa_varlen_forward(module: Any, query, key, value, attention_mask, dropout: float = 0.0,
                        scaling: float | None = None, is_causal: bool | None = None, **kwargs: Any):
    """Same contract as transformers.integrations.sdpa_attention.sdpa_attention_forward: (B, H, N, D) in,
    ((B, N, H, D), None) out."""
    global _kernel_failed
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    row = query.shape[0] == 1 and query.shape[2] == key.shape[2] and kwargs.get("position_bias") is None
    packed = None
    if row and (attention_mask is None or kwargs.get("cu_seq_lens_q") is not None):
        packed = packed_boundaries(kwargs, query.shape[2])
    if packed is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    cu, max_length = packed
    training = bool(getattr(module, "training", False))
    dtype = None if max_length is None or _kernel_failed else kernel_dtype(query, dropout, training)
    if dtype is not None:
        try:
            return varlen_kernel_attention(query, key, value, cu, max_length, scaling, dtype), None
        except (RuntimeError, NotImplementedError) as exc:  # e.g. a torch built without flash kernels
            _kernel_failed = True
            log.warning("torch's varlen attention kernel failed (%s); packed attention falls back to per-document "
                        "SDPA for the rest of this process", str(exc).splitlines()[0][:200])
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    with without_cudnn(query.is_cuda):
        return per_document_attention(query, key, value, cu.tolist(), dropout if training else 0.0, scaling), None


def varlen_mask(*, batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                attention_mask=None, local_size: int | None = None, use_vmap: bool = False, **kwargs: Any):
    """The mask function for ``sdpa_varlen``: no mask for a single causal row without padding, sdpa's otherwise.

    Why: for a packed row transformers composes a block-diagonal mask from the restarting position ids, which
    :func:`sdpa_varlen_forward` never reads (it attends per document from the boundaries, see
    :func:`packed_boundaries`). A padded batch, a cache (offsets), a sliding window or chunked attention
    (``local_size``), extra mask rules (``use_vmap``: the model adds its own and/or functions) and bidirectional
    masks (encoders) keep sdpa's mask."""
    causal = "allow_is_bidirectional_skip" not in kwargs  # only create_bidirectional_mask passes it
    if (causal and batch_size == 1 and attention_mask is None and q_length == kv_length and not q_offset
            and not kv_offset and local_size is None and not use_vmap):
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, attention_mask=attention_mask, local_size=local_size, use_vmap=use_vmap,
                     **kwargs)


def register() -> str:
    """Make ``attn_implementation="sdpa_varlen"`` known to transformers (idempotent); returns the name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

        AttentionInterface.register(NAME, sdpa_varlen_forward)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, varlen_mask)
        _registered = True
    return NAME
