"""Gives a real base model (Qwen2.5, Llama 3) the R1-Distill chat format its tokenizer lacks.

Why: a student SFT'd from a base that keeps its own end-of-turn token (``<|im_end|>``, ``<|eot_id|>``) while the
training text ends in R1's ``<｜end▁of▁sentence｜>`` never stops (REFERENCE.md pitfall 1), and a student whose
template is the official R1-Distill one loses its reasoning from the training text (pitfall 2). DeepSeek's
R1-Distill models keep R1's format: the R1 markers are single special tokens of the student's tokenizer, its EOS
is R1's, and its template renders the R1 layout. :func:`install_r1_format` does the same for any base: it adds the
markers as special tokens (``<think>``/``</think>`` as plain added tokens, so they survive
``skip_special_tokens``), makes R1's EOS/BOS/PAD the tokenizer's, installs distill's R1 template (the one that
keeps the reasoning), and gives the new ids embedding rows: appended when the matrix has no spare rows (Llama 3's
128,256 are all taken), reused when it has (Qwen2.5 pads its matrix), mean-initialised either way.
"""

from __future__ import annotations

from typing import Any

from ..chat_template import (ADDED_TOKENS, ASSISTANT, BOS, EOS, PAD, R1_CHAT_TEMPLATE, SPECIAL_TOKENS, TemplateError,
                             USER, render_training_pair)
from ..errors import DistillError


def _check(tokenizer: Any) -> None:
    render_training_pair(tokenizer, "1 + 1?", "1 + 1 = 2.", "\\boxed{2}")


def has_r1_format(tokenizer: Any) -> bool:
    """True when the tokenizer already renders R1 training pairs correctly, each marker is one token, and the
    assistant turn ends with the tokenizer's EOS."""
    vocab = tokenizer.get_vocab()
    if tokenizer.eos_token != EOS or any(t not in vocab for t in (*SPECIAL_TOKENS, *ADDED_TOKENS)):
        return False
    if not getattr(tokenizer, "chat_template", None):
        return False
    try:
        _check(tokenizer)
    except Exception:  # TemplateError, or a Jinja error in a foreign template: not R1 either way
        return False
    return True


def _mean_init_rows(model: Any, start: int, stop: int) -> None:
    """Set rows [start, stop) of the input and output embeddings to the mean of the rows before them, the start
    transformers' ``mean_resizing`` gives appended rows: new markers begin with an average, finite logit.

    Under ZeRO-3 each process holds only a shard (an empty tensor): the weight is gathered, changed on rank 0 and
    re-partitioned (every process runs this, as it runs build_student), else the write would silently miss."""
    import torch

    from .distributed import gathered

    layers = {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    for emb in layers.values():
        with gathered([emb.weight], modifier_rank=0), torch.no_grad():
            w = emb.weight
            w[start:stop] = w[:start].float().mean(0).to(w.dtype)


def embedding_rows(model: Any) -> int:
    """Rows of the input embedding matrix. Under ZeRO-3 the local tensor is an empty shard, so the full shape is
    DeepSpeed's ``ds_shape``: reading ``.shape`` there would see 0 rows and resize a matrix that has spare ones."""
    weight = model.get_input_embeddings().weight
    return int(getattr(weight, "ds_shape", weight.shape)[0])


def align_special_ids(config: Any, tokenizer: Any) -> Any:
    """``config`` with the tokenizer's BOS, EOS and PAD ids (R1's, once template.install_r1_format ran), in place of
    the base's (Llama 3.3 Instruct's ``<|eot_id|>``, Qwen2.5's ``<|endoftext|>``): whatever reads config.json
    rather than generation_config.json then stops where the student was trained to."""
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    return config


def stop_automatic_special_tokens(tokenizer: Any) -> bool:
    """Make tokenizing text add no special tokens of the tokenizer's own; True if it used to.

    Why: every text the student trains on is rendered by the chat template, which writes the BOS itself, and TRL
    tokenizes it with the tokenizer's defaults. Llama 3's tokenizer prepends ``<|begin_of_text|>`` (a
    post-processor in its tokenizer.json), DeepSeek's R1 tokenizers their own BOS, so every training sequence
    began with two BOS tokens, while the evaluation and serving engines, which tokenize chat-rendered text
    without special tokens, give the student one. The published tokenizer keeps the setting, so a user's
    ``tokenizer(prompt)`` gives the tokens the student was trained on."""
    if not tokenizer.num_special_tokens_to_add(pair=False):
        return False
    tokenizer.add_bos_token = False
    tokenizer.add_eos_token = False
    if tokenizer.num_special_tokens_to_add(pair=False):  # pragma: no cover - a tokenizer class we do not know
        raise DistillError(f"{type(tokenizer).__name__} still adds special tokens to every text after "
                           "add_bos_token/add_eos_token = False; training text would carry two BOS tokens",
                           where="student.base")
    return True


def install_r1_format(tokenizer: Any, model: Any | None = None) -> dict[str, Any]:
    """Add the R1 tokens and template to ``tokenizer`` in place and fit ``model``'s embeddings; returns what changed."""
    vocab_before = len(tokenizer)
    present = tokenizer.get_vocab()
    tokenizer.add_special_tokens({"bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
                                  "extra_special_tokens": [USER, ASSISTANT]},
                                 replace_extra_special_tokens=False)  # the base's own specials stay special
    tokenizer.add_tokens([t for t in ADDED_TOKENS if t not in present], special_tokens=False)
    tokenizer.chat_template = R1_CHAT_TEMPLATE
    info: dict[str, Any] = {"added_tokens": len(tokenizer) - vocab_before, "resized_embeddings": False}
    if model is not None:
        rows = embedding_rows(model)
        if len(tokenizer) > rows:
            # on the meta device (a process that will receive its weights) there are no rows to average
            on_meta = model.get_input_embeddings().weight.is_meta
            model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64, mean_resizing=not on_meta)
            info["resized_embeddings"] = True
        elif len(tokenizer) > vocab_before:
            _mean_init_rows(model, vocab_before, len(tokenizer))  # spare rows (Qwen2.5) were never trained
        info["embedding_rows"] = embedding_rows(model)
    try:
        _check(tokenizer)
    except TemplateError as exc:  # pragma: no cover - our own template; a failure here is a bug
        raise DistillError(f"installing the R1 format failed: {exc}", where="distill/student/template.py") from None
    return info


def prepare_chat_format(tokenizer: Any, model: Any, mode: str, where: str) -> dict[str, Any]:
    """Apply a StudentConfig.chat_format choice: ``r1`` installs, ``tokenizer`` insists on the tokenizer's own
    template (and fails now, not after training, if it would corrupt the data), ``auto`` installs only if needed."""
    if mode == "tokenizer" or (mode == "auto" and has_r1_format(tokenizer)):
        try:
            _check(tokenizer)
        except Exception as exc:  # TemplateError, or no/foreign template (ValueError, Jinja errors)
            raise DistillError(f"the tokenizer's chat template cannot render R1 training data: {exc} "
                               "(set chat_format: r1 to install distill's template)", where=where) from None
        info = {"chat_format": "tokenizer", "added_tokens": 0, "resized_embeddings": False}
    else:
        info = {"chat_format": "r1", **install_r1_format(tokenizer, model)}
    return {**info, "stopped_automatic_bos": stop_automatic_special_tokens(tokenizer)}
