"""Builds the student: a base model (Qwen2.5, Llama) by id or path, or a fresh one from an architecture config.

The same code path serves both: at tiny scale the demo initialises from a config; at full scale a recipe names a
base such as ``Qwen/Qwen2.5-Math-7B``. Either way the tokenizer, chat template, EOS and generation config are made
to agree, because a student whose EOS disagrees with its template never stops (REFERENCE.md pitfall 1).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, Qwen2Config

from ..catalog import resolve_path
from ..config import SamplingConfig, StudentConfig
from ..errors import DistillError

ARCHITECTURES = {"qwen2": (Qwen2Config, "Qwen2ForCausalLM"), "llama": (LlamaConfig, "LlamaForCausalLM")}


def _ref(ref: str) -> str:
    p = resolve_path(ref)
    return str(p) if p.exists() else ref


def load_tokenizer(ref: str):
    try:
        tok = AutoTokenizer.from_pretrained(_ref(ref))
    except OSError as exc:
        raise DistillError(f"cannot load tokenizer: {str(exc).splitlines()[0]}", where=ref) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_student(cfg: StudentConfig, teacher_model: str, seed: int = 0) -> tuple[Any, Any]:
    """Return (model, tokenizer). The tokenizer is the recipe's, else the base's, else the teacher's."""
    tok_ref = cfg.tokenizer or cfg.base or teacher_model
    tokenizer = load_tokenizer(tok_ref)
    torch.manual_seed(seed)
    if cfg.base:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = AutoModelForCausalLM.from_pretrained(_ref(cfg.base), dtype=torch.float32)
        except OSError as exc:
            raise DistillError(f"cannot load base model: {str(exc).splitlines()[0]}"
                               " (offline: only local folders and cached models load)", where=cfg.base) from None
    elif cfg.init_config:
        config_cls, _ = ARCHITECTURES[cfg.architecture]
        try:
            config = config_cls(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                **cfg.init_config)
        except TypeError as exc:
            raise DistillError(f"invalid init_config: {exc}", where=f"student '{cfg.name}'") from None
        model = AutoModelForCausalLM.from_config(config)
    else:
        raise DistillError("a student needs 'base' (model id or path) or 'init_config'", where=f"student '{cfg.name}'")
    align_eos(model, tokenizer)
    return model, tokenizer


def align_eos(model: Any, tokenizer: Any, sampling: SamplingConfig | None = None) -> None:
    """Make the model config and generation config stop on the tokenizer's EOS (the template's end of turn)."""
    sampling = sampling or SamplingConfig()
    eos = tokenizer.eos_token_id
    model.config.eos_token_id = eos
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
        do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
        max_new_tokens=min(sampling.max_new_tokens, 32768))


def save_model(model: Any, tokenizer: Any, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
