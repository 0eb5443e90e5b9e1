"""LoRA trains a small fraction of the weights and the saved student is a plain, merged model.

Why: single-GPU users train 7B-70B students with LoRA/QLoRA, but eval, quantisation, GGUF export and the Hub card all
expect a plain checkpoint; an unmerged adapter folder would break every later stage. The R1 markers' input rows
(think tags, User/Assistant) are trained in full, since a base that never saw them would otherwise read untrained
rows. QLoRA's NF4 base needs CUDA, so here it must refuse clearly; the bf16-reload merge it relies on
(merge_adapter_folder) is checked with a float32 base.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from distill.errors import DistillError
from distill.student.miniature import tiny_student, write_kept
from distill.student.model import build_student


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from tests.tiny_models import build_tiny_teacher

    return str(build_tiny_teacher(tmp_path_factory.mktemp("teacher")))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_lora_trains_and_exports_a_merged_plain_model(teacher, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from distill.student.train import train_student

    cfg = tiny_student(max_steps=3, learning_rate=2e-2)
    # untied embeddings, like Llama-3.1-8B and Qwen2.5-7B: the R1 marker input rows train in full
    cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"enabled": True, "r": 4, "alpha": 8}),
                                 "init_config": {**cfg.init_config, "tie_word_embeddings": False}})
    model, tok = build_student(cfg, teacher)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    total = sum(p.numel() for p in model.parameters())
    metrics = train_student(model, tok, cfg, write_kept(tmp_path / "kept", 12), tmp_path / "out")

    assert metrics["settings"]["lora"] and metrics["steps"] == 3
    assert 0 < metrics["trainable_parameters"] < 0.5 * total
    saved = tmp_path / "out" / "model"
    with safe_open(str(saved / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not any("lora" in k or "trainable_tokens" in k for k in keys)
    assert not (saved / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(saved)
    assert type(plain).__name__ == "Qwen2ForCausalLM"
    state = plain.state_dict()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(state[q], init[q])
    eos = tok.eos_token_id
    emb = "model.embed_tokens.weight"
    close = tok.convert_tokens_to_ids("</think>")
    assert not torch.equal(state[emb][close], init[emb][close])  # an R1 marker row was trained in full
    other = tok("apples", add_special_tokens=False)["input_ids"][0]
    assert torch.equal(state[emb][other], init[emb][other])  # ordinary rows stayed frozen
    ids = torch.tensor([tok("Mia has 3 apples.", add_special_tokens=False)["input_ids"]])
    assert torch.allclose(_logits(plain, ids), _logits(model, ids), atol=1e-5)  # merged == trained
    assert plain.generation_config.eos_token_id == eos


def test_adapter_merged_into_a_reloaded_base(teacher, tmp_path):
    """The path QLoRA and sharded runs take: adapter on disk + unquantised reload of the base, merged."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from distill.student.lora import merge_adapter_folder

    model, tok = build_student(tiny_student(), teacher)
    model.save_pretrained(tmp_path / "base")
    torch.manual_seed(1)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                                            task_type="CAUSAL_LM"))
    peft.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[1, 5, 9, 12, 40]])
    expected = _logits(peft, ids)
    merge_adapter_folder(str(tmp_path / "base"), tmp_path / "adapter", tmp_path / "merged", dtype="float32")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert torch.allclose(_logits(merged, ids), expected, atol=1e-5)


def test_qlora_refuses_without_cuda(teacher, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: QLoRA would load")
    cfg = tiny_student().model_copy(update={"base": teacher, "init_config": None})
    cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"enabled": True, "quantization": "nf4"})})
    with warnings.catch_warnings(), pytest.raises(DistillError, match="needs a CUDA GPU"):
        warnings.simplefilter("ignore")
        build_student(cfg, teacher)
