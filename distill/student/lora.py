"""LoRA / QLoRA through PEFT, and merging the adapter back so exports are plain models.

Why: a 7B-32B student does not fit full fine-tuning on one GPU; LoRA trains ~1% of the weights and QLoRA also holds
the frozen base in 4-bit NF4 (bitsandbytes, CUDA only). Everything downstream (eval with vLLM or transformers,
bitsandbytes/GGUF export, the Hub card) expects a plain checkpoint, so the adapter is merged (``merge_and_unload``)
before the model is saved. A QLoRA base is 4-bit: merging into it would round the update away, so the adapter is
merged into a bf16 reload of the base instead (:func:`merge_adapter_folder`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import LoraSettings
from ..errors import DistillError


def peft_config(lora: LoraSettings, trainable_token_ids: list[int] | dict[str, list[int]] | None = None):
    """A PEFT LoraConfig for a causal LM, or None when LoRA is off. ``trainable_token_ids`` are embedding rows
    trained in full (PEFT TrainableTokens): the R1 markers a base did not know, whose rows start untrained."""
    if not lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                      target_modules=lora.target_modules, task_type="CAUSAL_LM",
                      trainable_token_indices=trainable_token_ids or None)


def quantization_config(lora: LoraSettings, where: str):
    """bitsandbytes NF4 for QLoRA (double quantisation, bf16 compute, as in the QLoRA paper); None otherwise."""
    if not (lora.enabled and lora.quantization == "nf4"):
        if lora.quantization == "nf4":
            raise DistillError("lora.quantization: nf4 needs lora.enabled: true", where=where)
        return None
    import torch

    if not torch.cuda.is_available():
        raise DistillError("QLoRA (lora.quantization: nf4) needs a CUDA GPU: bitsandbytes 4-bit training does not "
                           "run on CPU; use plain LoRA (quantization: none) here", where=where)
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16)


def is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def is_quantized(model: Any) -> bool:
    base = model.get_base_model() if is_peft_model(model) else model
    return bool(getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False))


def merge_lora(model: Any) -> Any:
    """Fold the adapter into the base weights and drop the PEFT wrapper (in place for the base modules)."""
    if not is_peft_model(model):
        return model
    return model.merge_and_unload()


def merge_adapter_folder(base_ref: str, adapter_dir: str | Path, out_dir: str | Path, *, config: Any = None,
                         vocab_size: int | None = None, dtype: str = "bfloat16") -> Path:
    """Reload ``base_ref`` unquantised (with the training run's ``config``: RoPE overrides), grow its embeddings to
    the training vocabulary (R1 tokens), apply the adapter saved in ``adapter_dir``, merge and save to ``out_dir``.
    Used after QLoRA and after sharded runs, where the in-memory model is 4-bit or partitioned."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    kwargs = {"config": config} if config is not None else {}
    base = AutoModelForCausalLM.from_pretrained(base_ref, dtype=getattr(torch, dtype), **kwargs)
    if vocab_size and vocab_size != base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(vocab_size, mean_resizing=True)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    out_dir = Path(out_dir)
    merged.save_pretrained(out_dir)
    return out_dir
