"""LoRA / QLoRA through PEFT, and merging the adapter back so exports are plain models.

Why: a 7B-32B student does not fit full fine-tuning on one GPU; LoRA trains ~1% of the weights and QLoRA also holds
the frozen base in 4-bit NF4 (bitsandbytes: CUDA, or its CPU backend). Everything downstream (eval with vLLM or
transformers, bitsandbytes/GGUF export, the Hub card) expects a plain checkpoint, so the adapter is merged
(``merge_and_unload``) before the model is saved. A QLoRA base is 4-bit: merging into it would round the update away, so the adapter is
merged into a bf16 reload of the base instead (:func:`merge_adapter_folder`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import LoraSettings
from ..errors import DistillError


def peft_config(lora: LoraSettings, trainable_token_ids: list[int] | dict[str, list[int]] | None = None):
    """A PEFT LoraConfig for a causal LM, or None when LoRA is off. ``trainable_token_ids`` are embedding rows
    trained in full (PEFT TrainableTokens), per layer name: the R1 markers a base did not know, whose rows start
    untrained (see :func:`token_row_layers`)."""
    if not lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                      target_modules=lora.target_modules, task_type="CAUSAL_LM",
                      trainable_token_indices=trainable_token_ids or None)


def quantization_config(lora: LoraSettings, where: str):
    """bitsandbytes NF4 for QLoRA (double quantisation, bf16 compute, as in the QLoRA paper); None otherwise.

    It runs wherever bitsandbytes does: on a CUDA GPU, and (bitsandbytes 0.46 on, its CPU backend) on the CPU,
    slowly, which is how the tests train a real QLoRA student and merge it."""
    if not (lora.enabled and lora.quantization == "nf4"):
        if lora.quantization == "nf4":
            raise DistillError("lora.quantization: nf4 needs lora.enabled: true", where=where)
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16)


def ties_embeddings(model: Any) -> bool:
    """True when the output layer shares its weight with the input embedding (Qwen2.5-1.5B, the tiny students)."""
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def token_row_layers(model: Any, ids: list[int]) -> dict[str, list[int]]:
    """PEFT ``trainable_token_indices`` that train rows ``ids`` of the input embedding and of the output layer.

    Both sides matter for a marker the base never saw: the input row is what the student reads for ``</think>``
    and the output row is what lets it *write* ``</think>`` and stop on EOS. An output layer tied to the input
    embedding is left out: PEFT wraps it with the input layer's adapter itself, so one delta trains both. Layer
    names are the modules' own (``embed_tokens``/``lm_head`` for Qwen2 and Llama)."""
    names = {id(m): n.rsplit(".", 1)[-1] for n, m in model.named_modules()}
    layers = {names[id(model.get_input_embeddings())]: list(ids)}
    out = model.get_output_embeddings()
    if out is not None and not ties_embeddings(model):
        layers[names[id(out)]] = list(ids)
    return layers


def let_fused_head_read_token_rows(model: Any) -> None:
    """Make TRL's fused LM head train the output rows of PEFT TrainableTokens; call once the trainer built the
    PEFT model.

    Why: TRL 1.16's SFTTrainer never calls the output layer. Its fused, chunked loss (trl add_fused_lm_head) reads
    ``get_output_embeddings().weight`` and ``.bias`` and multiplies by them itself. On PEFT's TrainableTokensWrapper
    ``weight`` is the base matrix with the trained rows spliced in (index_copy of the deltas: differentiable), so
    the fused loss does reach and train the new rows, but the wrapper forwards no other attribute (peft 0.21), and
    ``.bias`` raises AttributeError. Registering the wrapped layer's own bias on the wrapper (None for the
    bias-free Qwen2/Llama heads, so nothing is added to any state dict) completes the lookup without changing what
    is trained, merged or saved."""
    from peft.utils.other import TrainableTokensWrapper

    base = model.get_base_model() if is_peft_model(model) else model
    head = base.get_output_embeddings()
    if isinstance(head, TrainableTokensWrapper) and "bias" not in head._parameters:
        head.register_parameter("bias", getattr(head.token_adapter.get_base_layer(), "bias", None))


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
                         tokenizer: Any = None, vocab_size: int | None = None, dtype: str = "bfloat16") -> Path:
    """Reload ``base_ref`` unquantised (with the training run's ``config``: RoPE overrides), grow its embeddings to
    the training vocabulary (R1 tokens), apply the adapter saved in ``adapter_dir``, merge and save to ``out_dir``,
    with the special-token ids of the training ``tokenizer`` (the reloaded config.json names the base's).
    Used after QLoRA and after sharded runs, where the in-memory model is 4-bit or partitioned."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from .template import align_special_ids

    kwargs = {"config": config} if config is not None else {}
    base = AutoModelForCausalLM.from_pretrained(base_ref, dtype=getattr(torch, dtype), **kwargs)
    if vocab_size and vocab_size != base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(vocab_size, mean_resizing=True)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    if tokenizer is not None:
        align_special_ids(merged.config, tokenizer)
    out_dir = Path(out_dir)
    merged.save_pretrained(out_dir)
    return out_dir
