"""Resolves the ``auto`` efficiency settings of a recipe on the machine that actually trains.

Why: one recipe must run on an 8xH100 node (flash-attention 2, Liger kernels, bf16), on a one-GPU workstation that
lacks flash-attn, and in CI on a CPU. Each choice is a pure function of what is requested and what the machine
has, so the rules are testable here; a recipe that *asks* for something missing gets a warning and the nearest
working setting instead of a crash three hours into a queue.

Padding-free packing needs no flash-attention: transformers derives a block-diagonal mask from the restarting
``position_ids`` for ``sdpa`` and ``eager`` (masking_utils.find_packed_sequence_indices), so packed examples never
attend to each other on any backend (tests/test_student_packing.py). Flash-attention's varlen kernel only makes it
cheaper (no N x N mask).
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Sequence

FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}
# the 'gpu' extra installs flash-attn 2 only; FlashAttention 3 (Hopper GPUs) is built from source
INSTALL_HINTS = {"flash_attention_2": "pip install the 'gpu' extra for flash-attention",
                 "flash_attention_3": "FlashAttention 3 is built from the hopper/ folder of the flash-attention "
                                      "repository, for Hopper GPUs; the 'gpu' extra installs flash-attention 2"}


def installed(module: str) -> bool:
    """True when ``module`` can be imported (without importing it: flash_attn pulls CUDA on import)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_attn_implementation(requested: str = "auto", *, cuda: bool | None = None,
                                have: Sequence[str] | None = None, packed: bool = False) -> str:
    """``auto`` -> flash_attention_2 when flash_attn is importable and a GPU is present, else sdpa; for padding-free
    packed training the SDPA fallback is ``sdpa_varlen`` (attention.py: per-document SDPA, no N x N waste).

    An explicit flash-attention request that cannot be met (package missing, or no GPU) warns and falls back the
    same way: plain sdpa honours packed position ids too, only slower."""
    cuda = cuda_available() if cuda is None else cuda
    have = [k for k, mod in FLASH_PACKAGES.items() if installed(mod)] if have is None else list(have)
    fallback = _varlen() if packed else "sdpa"
    if requested == "auto":
        return "flash_attention_2" if cuda and "flash_attention_2" in have else fallback
    if requested in FLASH_PACKAGES:
        if requested not in have:
            warnings.warn(f"the recipe asks for {requested} but {FLASH_PACKAGES[requested]} is not installed; "
                          f"using {fallback} ({INSTALL_HINTS[requested]})", RuntimeWarning, stacklevel=2)
            return fallback
        if not cuda:
            warnings.warn(f"the recipe asks for {requested} but no GPU is present; using {fallback}",
                          RuntimeWarning, stacklevel=2)
            return fallback
    if requested == "sdpa_varlen":
        return _varlen()
    return requested


def _varlen() -> str:
    from .attention import register

    return register()


def hub_kernels_installed() -> bool:
    """True when transformers can kernelize with the Hub ``kernels`` package (a version it supports)."""
    from transformers.utils import is_kernels_available

    return bool(is_kernels_available())


def liger_provider(*, package: bool | None = None, hub: bool | None = None) -> str | None:
    """Where Liger's kernels come from on this machine: ``"liger_kernel"`` (the pip package: local Triton code, so
    it works on an offline cluster), else ``"hub"`` (transformers' Hub kernels, fetched from the Hub or its cache at
    first use), else None.

    Why the package first: TRL 1.16 deprecates its ``use_liger_kernel`` argument in favour of Hub kernels, but GPU
    nodes are often cut off from the Hub, and a user who pip-installed liger-kernel asked for exactly that."""
    package = installed("liger_kernel") if package is None else package
    if package:
        return "liger_kernel"
    hub = hub_kernels_installed() if hub is None else hub
    return "hub" if hub else None


def resolve_liger(requested: bool | None, *, cuda: bool | None = None, have: bool | None = None) -> bool:
    """Liger's Triton kernels (fused RMSNorm, SwiGLU, RoPE) need a GPU and a provider (:func:`liger_provider`:
    the liger-kernel package or transformers' Hub kernels; train.liger_callbacks applies them). ``None`` (auto):
    on when both are here. An explicit request that cannot be met warns and trains without them."""
    cuda = cuda_available() if cuda is None else cuda
    have = liger_provider() is not None if have is None else have
    if requested is None:
        return bool(cuda and have)
    if requested and not (cuda and have):
        why = "neither liger-kernel nor the kernels package (Hub kernels) is installed" if not have \
            else "no GPU is present"
        warnings.warn(f"the recipe asks for use_liger_kernel but {why}; training without it", RuntimeWarning,
                      stacklevel=2)
        return False
    return bool(requested)


def resolve_bf16(requested: bool | None, *, cuda: bool | None = None, supported: bool | None = None) -> bool:
    """bf16 mixed precision on a GPU that supports it (Ampere and later); CPU training stays float32."""
    cuda = cuda_available() if cuda is None else cuda
    if supported is None:
        import torch

        supported = bool(cuda and torch.cuda.is_bf16_supported())
    if requested is None:
        return bool(cuda and supported)
    if requested and not (cuda and supported):
        warnings.warn("the recipe asks for bf16 but this machine has no bf16 GPU; training in float32",
                      RuntimeWarning, stacklevel=2)
        return False
    return bool(requested)



def resolve_padding_free(packing: bool, strategy: str, requested: bool | None) -> bool:
    """TRL turns padding-free on for bfd packing regardless; we say so in the config instead of hiding it."""
    if packing and strategy in ("bfd", "bfd_split"):
        return True
    return bool(requested)
