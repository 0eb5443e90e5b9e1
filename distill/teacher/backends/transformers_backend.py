"""A teacher (or any model under evaluation) run with transformers ``generate`` on the local machine.

This is the backend for small teachers, for the students in eval, and for the CPU demo. Prompts are batched with
left padding; each prompt gets ``n`` samples via ``num_return_sequences``.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Iterator

import torch

from ...chat_template import render_prompt
from ...errors import DistillError
from ...records import Generation, Prompt, Sampling
from .base import make_generation

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model_and_tokenizer(model_ref: str, dtype: str = "float32"):
    """Load a causal LM and its tokenizer from a folder or Hub id, offline-aware, with one clear error."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ...hub_access import loadable_ref

    model_ref = loadable_ref(model_ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_ref)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # on the GPUs when there are any (device_map=None would leave the weights on the CPU: seen on an H200,
            # where the pipeline's evaluation ran on the CPU), spread over them when one is not enough
            model = AutoModelForCausalLM.from_pretrained(model_ref, dtype=DTYPES[dtype], device_map="auto"
                                                         if torch.cuda.is_available() else "cpu")
    except OSError as exc:
        hint = " (offline: only local folders and cached models load)" if not Path(model_ref).exists() else ""
        raise DistillError(f"cannot load model: {str(exc).splitlines()[0]}{hint}", where=model_ref) from None
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


class TransformersBackend:
    """Batched sampling with a transformers model: ``batch_size`` prompts x ``n`` samples per forward."""

    def __init__(self, model_ref: str, *, name: str | None = None, dtype: str = "float32", batch_size: int = 32,
                 model=None, tokenizer=None):
        self.name = name or str(model_ref)
        self.batch_size = batch_size
        if model is None:
            model, tokenizer = load_model_and_tokenizer(model_ref, dtype)
        self.model, self.tokenizer = model, tokenizer
        self.stats = {"prompt_tokens": 0, "completion_tokens": 0, "prompts": 0, "samples": 0}

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        ids.add(self.tokenizer.eos_token_id)
        return ids

    @torch.inference_mode()
    def generate(self, prompts: list[Prompt], sampling: Sampling) -> Iterator[list[Generation]]:
        eos_ids = self._eos_ids()
        pad_id = self.tokenizer.pad_token_id
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start:start + self.batch_size]
            texts = [render_prompt(self.tokenizer, p.problem) for p in batch]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                self.model.device)
            # Seeded per batch content, so a resumed run samples what an uninterrupted one would have.
            digest = hashlib.sha256(f"{sampling.seed}:{batch[0].id}".encode()).digest()
            torch.manual_seed(int.from_bytes(digest[:8], "little") % (2**63))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = self.model.generate(
                    **enc, do_sample=sampling.temperature > 0, temperature=sampling.temperature or None,
                    top_p=sampling.top_p, top_k=0, max_new_tokens=sampling.max_new_tokens,
                    num_return_sequences=sampling.n, pad_token_id=pad_id, eos_token_id=sorted(eos_ids))
            new = out[:, enc["input_ids"].shape[1]:]
            prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
            for i, prompt in enumerate(batch):
                group = []
                for j in range(sampling.n):
                    row = new[i * sampling.n + j].tolist()
                    stop_at = next((k for k, t in enumerate(row) if t in eos_ids), None)
                    finish = "stop" if stop_at is not None else "length"
                    tokens = row[:stop_at] if stop_at is not None else row
                    text = self.tokenizer.decode(tokens, skip_special_tokens=False)
                    n_tokens = len(tokens) + (1 if stop_at is not None else 0)
                    group.append(make_generation(prompt, j, text, finish, prompt_tokens=int(prompt_lens[i]),
                                                 completion_tokens=n_tokens, teacher=self.name,
                                                 sampling=sampling))
                    self.stats["completion_tokens"] += n_tokens
                self.stats["prompt_tokens"] += int(prompt_lens[i])
                self.stats["prompts"] += 1
                self.stats["samples"] += sampling.n
                yield group
