"""Tiny random teachers/students for tests: a byte-level BPE tokenizer with the R1 special tokens and chat template,
and a Qwen2 model with a few thousand weights, saved like a Hub checkpoint.

Why: tests must exercise the real loading and generation paths (AutoTokenizer/AutoModelForCausalLM, chat template,
generate) on CPU in seconds without downloading anything. These are plain functions, not fixtures, so any test
module can build one into its own ``tmp_path`` (or a session-scoped ``tmp_path_factory`` folder).
"""

from __future__ import annotations

from pathlib import Path

from distill.chat_template import (ADDED_TOKENS, ASSISTANT, BOS, EOS, PAD, R1_CHAT_TEMPLATE, SPECIAL_TOKENS, USER,
                                   MATH_SUFFIX)

_CORPUS = [
    "What is 12 + 7? " + MATH_SUFFIX,
    "Let me add the numbers step by step. 12 + 7 = 19. So the answer is \\boxed{19}.",
    "Compute 3 * 4 - 5. First 3 * 4 = 12, then 12 - 5 = 7. The answer is \\boxed{7}.",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) The sum product difference of and is so we get",
    "Okay, so I need to find the value. Wait, let me check again. Hmm, that gives the result.",
]


def build_tiny_tokenizer(out_dir: str | Path, vocab_size: int = 400):
    """Train a byte-level BPE on a few arithmetic lines; returns the saved PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    fast.add_special_tokens({"additional_special_tokens": [USER, ASSISTANT]})
    fast.add_tokens(list(ADDED_TOKENS))
    fast.chat_template = R1_CHAT_TEMPLATE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_model(out_dir: str | Path, vocab_size: int, *, bos_id: int, eos_id: int, pad_id: int,
                     seed: int = 0, hidden: int = 32, layers: int = 2):
    """A randomly initialised Qwen2 causal LM (the R1-Distill student architecture), saved as safetensors."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, bos_token_id=bos_id, eos_token_id=eos_id,
                         pad_token_id=pad_id, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    model.save_pretrained(out_dir)
    return model


def build_tiny_teacher(out_dir: str | Path, seed: int = 0) -> Path:
    """Tokenizer plus random model in one folder that ``AutoModelForCausalLM.from_pretrained`` loads."""
    out_dir = Path(out_dir)
    tok = build_tiny_tokenizer(out_dir)
    build_tiny_model(out_dir, len(tok), bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                     seed=seed)
    return out_dir
