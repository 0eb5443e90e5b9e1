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


def _bpe_on_traces(specials: list[str]):
    """A byte-level BPE (``tokenizers.Tokenizer``) of 350 tokens trained here on the bundled traces, ``specials``
    first: the tokenizer a Hub base would bring, without the Hub."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from distill.student.miniature import kept_rows

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = [r["problem"] + "\n" + r["reasoning"] for r in kept_rows(20)]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=350, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return bpe


def _qwen_like_base(folder, template=CHATML, tie=False):
    """A byte-level BPE with Qwen's specials and ChatML template, and a 4k-context Qwen2 model whose embedding
    matrix has no spare rows (like Llama 3), saved like a Hub checkpoint."""
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    bpe = _bpe_on_traces(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
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


def _llama3_like_base(folder):
    """Llama 3's shape of base: specials of its own, a tokenizer.json post-processor that prepends
    ``<|begin_of_text|>`` to every tokenized text, ``llama3`` RoPE scaling, an untied head, and a generation config
    that stops on a list of ids (as Llama-3.3-70B-Instruct's does)."""
    from tokenizers import processors
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = _bpe_on_traces(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                          "<|eot_id|>"])
    bos = ("<|begin_of_text|>", bpe.token_to_id("<|begin_of_text|>"))
    bpe.post_processor = processors.TemplateProcessing(single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B:1",
                                                       special_tokens=[bos])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=bos[0], eos_token="<|eot_id|>")
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
                         "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}")
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131_072,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8192},
                         tie_word_embeddings=False, bos_token_id=bos[1], eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(config)
    stops = [tok.eos_token_id, tok.convert_tokens_to_ids("<|end_of_text|>")]
    model.generation_config = GenerationConfig(bos_token_id=bos[1], eos_token_id=stops)
    model.save_pretrained(folder)
    return folder


def _trained_token_ids(cfg, tmp_path) -> tuple[dict, list[int], tuple]:
    """The first training example as TRL's SFTTrainer tokenizes it for ``cfg``'s student (input ids, labels), the
    template's tokens for it, and the student (model, tokenizer)."""
    from datasets import Dataset
    from trl import SFTTrainer

    from distill.student import train
    from distill.student.miniature import write_kept

    model, tok = build_student(cfg, teacher_model="unused")
    rows = train.training_pairs(write_kept(tmp_path / "kept", 2), tok)
    trainer = SFTTrainer(model=model, args=train.training_args(cfg, tmp_path / "out", tok, model),
                         train_dataset=Dataset.from_list(rows), processing_class=tok)
    template = tok(rows[0]["prompt"] + rows[0]["completion"], add_special_tokens=False)["input_ids"]
    return trainer.train_dataset[0], template, (model, tok)


def test_llama3_base_trains_on_the_template_tokens_with_one_bos(tmp_path):
    """The 8B and 70B recipes' bases are Llama 3, whose tokenizer prepends ``<|begin_of_text|>`` to every text.
    TRL tokenizes the template-rendered training text with the tokenizer's defaults, so every trace began
    ``<|begin_of_text|><｜begin▁of▁sentence｜>``, while evaluation and serving (chat-rendered text tokenized without
    special tokens) give the student R1's BOS alone. The student must train on exactly the template's tokens, stop
    on R1's EOS alone (not the base's list), keep Llama 3's RoPE scaling, and publish a tokenizer that adds nothing."""
    from transformers import AutoTokenizer

    from distill.student.miniature import tiny_student

    base = _llama3_like_base(tmp_path / "base")
    cfg = tiny_student(max_steps=1).model_copy(update={"base": str(base), "init_config": None})
    example, template, (model, tok) = _trained_token_ids(cfg, tmp_path)
    ids = example["input_ids"]
    assert type(model).__name__ == "LlamaForCausalLM" and model.distill_build_info["stopped_automatic_bos"]
    assert ids == template and tok.convert_ids_to_tokens(ids[:2]) == ["<｜begin▁of▁sentence｜>", "<｜User｜>"]
    # the loss covers the assistant turn after the pre-filled "<think>\n", up to and including R1's EOS
    labels = example["labels"]
    prompt = next(i for i, label in enumerate(labels) if label != -100)
    assert set(labels[:prompt]) == {-100} and labels[prompt:] == ids[prompt:]
    assert tok.decode(ids[:prompt]).endswith("<｜Assistant｜><think>\n")
    assert ids[-1] == tok.eos_token_id == model.generation_config.eos_token_id == tok.convert_tokens_to_ids(EOS)
    assert model.config.rope_parameters["rope_type"] == "llama3"
    reloaded = AutoTokenizer.from_pretrained(save_model(model, tok, tmp_path / "saved"))
    text = "<｜begin▁of▁sentence｜><｜User｜>1 + 1?"
    assert reloaded(text)["input_ids"] == reloaded(text, add_special_tokens=False)["input_ids"]


def test_an_r1_tokenizer_adding_its_own_bos_trains_on_one(tmp_path):
    """DeepSeek's R1 tokenizers prepend their BOS to every text (add_bos_token) and their template writes it too:
    a base already in the R1 format (chat_format auto keeps its template) must still train on one."""
    from transformers import AutoTokenizer

    from distill.student.miniature import tiny_student
    from tests.tiny_models import build_tiny_teacher

    base = build_tiny_teacher(tmp_path / "base")
    tok = AutoTokenizer.from_pretrained(base)
    tok.add_bos_token = True
    tok.save_pretrained(base)
    assert AutoTokenizer.from_pretrained(base).num_special_tokens_to_add(pair=False) == 1
    cfg = tiny_student(max_steps=1).model_copy(update={"base": str(base), "init_config": None})
    example, template, (model, _) = _trained_token_ids(cfg, tmp_path)
    info = model.distill_build_info
    assert info["chat_format"] == "tokenizer" and info["stopped_automatic_bos"]
    assert example["input_ids"] == template


def test_the_tokenizer_declares_the_students_context_not_its_sources(tmp_path, caplog):
    """The teacher's tokenizer (512 tokens declared) on a student of 2,048 positions: every trace past 512 tokens
    drew transformers' "Token indices sequence length is longer than the specified maximum sequence length for this
    model ... will result in indexing errors", false for this student, and the published tokenizer said 512."""
    import logging

    from distill.student.miniature import tiny_student
    from tests.tiny_models import build_tiny_teacher

    teacher = build_tiny_teacher(tmp_path / "teacher")
    cfg = tiny_student().model_copy(update={"init_config": {**TINY_INIT, "max_position_embeddings": 2048}})
    model, tok = build_student(cfg, str(teacher))
    assert model.config.max_position_embeddings == tok.model_max_length == 2048
    with caplog.at_level(logging.WARNING):
        assert len(tok("1 + 2 = 3. " * 200)["input_ids"]) > 512
    assert "indexing errors" not in caplog.text
