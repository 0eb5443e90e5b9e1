"""A real base (Qwen2.5-style tokenizer without R1 tokens, 4k context) becomes an R1-format 32k student.

Why: REFERENCE.md pitfall 1 (a student whose EOS disagrees with its template never stops) and pitfall 2 (the
official template strips the reasoning) bite exactly when a recipe names a Hub base; and Qwen2.5-Math's 4k native
context must be stretched (RoPE theta 300k, 32k positions) as the open reproduction did. These run the real
loading path (AutoConfig/AutoModelForCausalLM.from_pretrained from a local folder) on a tiny model built here.
"""

from __future__ import annotations

import pytest
import torch

from distill.chat_template import ADDED_TOKENS, EOS, SPECIAL_TOKENS, render_training_pair
from distill.config import StudentConfig
from distill.errors import DistillError
from distill.student.miniature import TINY_INIT
from distill.student.model import build_student, save_model

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# The official R1-Distill layout: drops everything up to </think> from assistant turns.
OFFICIAL_R1 = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
               "{% elif m['role'] == 'assistant' %}<｜Assistant｜>{{ m['content'].split('</think>')[-1] }}"
               "<｜end▁of▁sentence｜>{% endif %}{% endfor %}"
               "{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}")


def _qwen_like_base(folder, template=CHATML, tie=False):
    """A byte-level BPE with Qwen's specials and ChatML template, and a 4k-context Qwen2 model whose embedding
    matrix has no spare rows (like Llama 3), saved like a Hub checkpoint."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from distill.student.miniature import kept_rows

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = [r["problem"] + "\n" + r["reasoning"] for r in kept_rows(20)]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=350, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = template
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_theta=10000.0, tie_word_embeddings=tie, eos_token_id=tok.eos_token_id)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder, len(tok)


def _inv_freq_for(theta: float, head_dim: int) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))


def test_base_gets_r1_tokens_template_eos_and_32k_rope(tmp_path):
    base, vocab_before = _qwen_like_base(tmp_path / "base")
    cfg = StudentConfig(base=str(base), rope_theta=300_000.0, max_position_embeddings=32_768)
    model, tok = build_student(cfg, teacher_model="unused")

    # R1 format installed: every marker is one token, EOS is R1's, the base's own specials are kept
    for t in SPECIAL_TOKENS + ADDED_TOKENS:
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
    assert tok.eos_token == EOS and "<|im_end|>" in tok.get_vocab()
    assert model.distill_build_info["chat_format"] == "r1" and model.distill_build_info["resized_embeddings"]
    assert model.get_input_embeddings().weight.shape[0] >= len(tok) > vocab_before
    assert model.get_output_embeddings().weight.shape[0] == model.get_input_embeddings().weight.shape[0]
    prompt, completion = render_training_pair(tok, "Mia has 3 apples. She buys 2 more.", "3 + 2 = 5.",
                                              "The answer is \\boxed{5}.")
    ids = tok(prompt + completion, add_special_tokens=False)["input_ids"]
    assert ids[-1] == tok.eos_token_id == model.generation_config.eos_token_id == model.config.eos_token_id
    assert "3 + 2 = 5." in completion

    # RoPE: the override reaches the config and the rotary embedding the model actually uses
    assert model.config.rope_parameters["rope_theta"] == 300_000.0
    assert model.config.max_position_embeddings == 32_768 and tok.model_max_length == 32_768
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    assert torch.allclose(model.model.rotary_emb.inv_freq, _inv_freq_for(300_000.0, head_dim))
    with torch.no_grad():  # a forward past the base's native 4k positions works
        model(input_ids=torch.tensor([[tok.bos_token_id] * 8]), position_ids=torch.tensor([[5000 + i for i in
                                                                                              range(8)]]))

    # the saved student reloads with the same format and config
    out = save_model(model, tok, tmp_path / "saved")
    from transformers import AutoConfig, AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(out)
    assert reloaded.eos_token == EOS and len(reloaded) == len(tok)
    assert AutoConfig.from_pretrained(out).rope_parameters["rope_theta"] == 300_000.0


def test_rope_override_on_an_init_config_student(tmp_path):
    from tests.tiny_models import build_tiny_teacher

    teacher = build_tiny_teacher(tmp_path / "teacher")
    cfg = StudentConfig(init_config=dict(TINY_INIT), rope_theta=300_000.0, max_position_embeddings=32_768)
    model, _ = build_student(cfg, str(teacher))
    assert model.config.rope_parameters == {"rope_theta": 300_000.0, "rope_type": "default"}
    assert model.config.max_position_embeddings == 32_768
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    assert torch.allclose(model.model.rotary_emb.inv_freq, _inv_freq_for(300_000.0, head_dim))
    plain, _ = build_student(StudentConfig(init_config=dict(TINY_INIT)), str(teacher))
    assert plain.config.rope_parameters["rope_theta"] == 10_000.0


def test_keeping_a_foreign_template_fails_before_training(tmp_path):
    base, _ = _qwen_like_base(tmp_path / "base")
    with pytest.raises(DistillError, match="chat_format: r1"):
        build_student(StudentConfig(base=str(base), chat_format="tokenizer"), teacher_model="unused")


def test_official_r1_template_is_replaced_without_new_tokens(tmp_path):
    """A tokenizer that has the R1 tokens but the reasoning-stripping official template gets distill's template;
    its vocabulary stays as it is."""
    from tests.tiny_models import build_tiny_teacher

    teacher = build_tiny_teacher(tmp_path / "t")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher)
    tok.chat_template = OFFICIAL_R1
    tok.save_pretrained(teacher)
    with pytest.raises(DistillError, match="drops the reasoning"):
        build_student(StudentConfig(base=str(teacher), chat_format="tokenizer"), teacher_model="unused")
    model, tok2 = build_student(StudentConfig(base=str(teacher)), teacher_model="unused")
    info = model.distill_build_info
    assert info["chat_format"] == "r1" and info["added_tokens"] == 0 and len(tok2) == len(tok)
    prompt, completion = render_training_pair(tok2, "1 + 1?", "1 + 1 = 2.", "\\boxed{2}")
    assert "1 + 1 = 2." in completion
