"""LoRA trains a small fraction of the weights and the saved student is a plain, merged model.

Why: single-GPU users train 7B-70B students with LoRA/QLoRA, but eval, quantisation, GGUF export and the Hub card all
expect a plain checkpoint; an unmerged adapter folder would break every later stage. The R1 markers' input rows
(think tags, User/Assistant) are trained in full, since a base that never saw them would otherwise read untrained
rows. QLoRA trains here too, on bitsandbytes' CPU backend, and its bf16-reload merge (merge_adapter_folder) is
also checked with a float32 base.
"""

from __future__ import annotations


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
    assert metrics["settings"]["lora_dropout"] == cfg.lora.dropout == 0.05  # SFT trains with the recipe's dropout
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


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_lora_trains_both_sides_of_the_r1_tokens_a_base_lacks(tmp_path, tie):
    """A base without the R1 markers (chat_format r1 adds them): LoRA must train their input rows *and* their output
    rows, or the student could read ``</think>`` but never learn to write it or to stop. TRL's fused loss reads the
    output layer's weight directly, so this trains for real through SFTTrainer and looks at the rows: the new ones
    moved on both sides, every base row stayed bit-identical, and the merged export computes the same logits as
    the trained adapter (reloaded from the run's checkpoint onto a fresh build of the same base)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from distill.chat_template import ASSISTANT, EOS, THINK_CLOSE, THINK_OPEN, USER
    from distill.student.train import train_student
    from tests.test_student_base_model import _qwen_like_base

    base, vocab_before = _qwen_like_base(tmp_path / "base", tie=tie)
    cfg = tiny_student(max_steps=3, learning_rate=2e-2, save_steps=3)
    cfg = cfg.model_copy(update={"base": str(base), "init_config": None, "chat_format": "r1",
                                 "lora": cfg.lora.model_copy(update={"enabled": True, "r": 4, "alpha": 8})})
    model, tok = build_student(cfg, teacher_model="unused")
    new = list(range(vocab_before, len(tok)))
    assert len(new) == 7 and model.distill_build_info["added_tokens"] == 7  # every R1 marker is new to this base
    init_in = model.get_input_embeddings().weight.detach().clone()
    init_out = model.get_output_embeddings().weight.detach().clone()
    train_student(model, tok, cfg, write_kept(tmp_path / "kept", 12), tmp_path / "out")

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")
    w_in, w_out = plain.get_input_embeddings().weight, plain.get_output_embeddings().weight
    ids = tok.convert_tokens_to_ids
    for t in (THINK_OPEN, THINK_CLOSE, USER, ASSISTANT):  # read in every training text: input rows trained
        assert not torch.equal(w_in[ids(t)], init_in[ids(t)]), t
    for t in (THINK_CLOSE, EOS):  # predicted in every completion: output rows trained
        assert not torch.equal(w_out[ids(t)], init_out[ids(t)]), t
    frozen = [i for i in range(init_in.shape[0]) if i not in new]
    assert torch.equal(w_in[frozen], init_in[frozen]) and torch.equal(w_out[frozen], init_out[frozen])

    fresh, _ = build_student(cfg, teacher_model="unused")  # the same starting point, rebuilt
    assert torch.equal(fresh.get_output_embeddings().weight, init_out)
    trained = PeftModel.from_pretrained(fresh, str(tmp_path / "out" / "checkpoints" / "checkpoint-3"))
    x = torch.tensor([tok("Mia has 3 apples.", add_special_tokens=False)["input_ids"] + [ids(THINK_CLOSE)]])
    assert torch.allclose(_logits(plain, x), _logits(trained, x), atol=1e-5)  # merged == trained adapter


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


def test_the_qlora_recipe_trains_an_nf4_base_and_saves_the_merged_student(tmp_path):
    """The shipped tiny QLoRA recipe for real on the CPU (bitsandbytes' CPU backend): the bundled teacher's linear
    layers train frozen in NF4, only the adapters and the R1 marker rows move, and the saved student is the adapter
    merged into a bf16 reload of the base: a plain checkpoint, the same as PEFT's own merge of the saved adapter.
    (It refused to start without CUDA before; bitsandbytes 0.46 on runs NF4 on the CPU.)"""
    from bitsandbytes.nn import Linear4bit
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    from distill.config import load_entry, parse_override
    from distill.student.train import train_student

    overrides = ["train.max_steps=3", "train.per_device_train_batch_size=8", "train.logging_steps=1",
                 "train.threads=1", "train.learning_rate=1e-2"]
    cfg = load_entry("student", "tiny-arith-qlora", [(*parse_override(text), text) for text in overrides])
    model, tok = build_student(cfg, "unused")
    assert isinstance(model.model.layers[0].self_attn.q_proj, Linear4bit)  # PEFT wraps it when training starts
    metrics = train_student(model, tok, cfg, write_kept(tmp_path / "kept", 24), tmp_path / "out")
    assert metrics["steps"] == 3 and metrics["settings"]["lora"]

    saved, adapter = tmp_path / "out" / "model", tmp_path / "out" / "adapter"
    assert "quantization_config" not in AutoConfig.from_pretrained(saved).to_dict()
    with safe_open(str(saved / "model.safetensors"), "pt") as f:
        assert not any("lora" in k or "trainable_tokens" in k for k in f.keys())
    base = AutoModelForCausalLM.from_pretrained(cfg.base, dtype=torch.bfloat16)
    untouched = {k: v.clone() for k, v in base.state_dict().items()}
    reference = PeftModel.from_pretrained(base, adapter).merge_and_unload().state_dict()
    merged = AutoModelForCausalLM.from_pretrained(saved).state_dict()
    assert set(merged) == set(reference)
    assert all(torch.equal(merged[k], reference[k]) for k in reference)
    assert any(not torch.equal(merged[k], untouched[k]) for k in untouched)  # the adapters moved the weights


def test_lora_under_fsdp_is_refused_before_loading(tmp_path, monkeypatch):
    """Under fsdp2.yaml LoRA stopped inside accelerate's prepare, after the weights had loaded (a PEFT-wrapped
    embedding cannot be re-tied; PEFT's trainable token rows mix plain tensors into DTensor shards: both measured
    through tests/fsdp_on_cpu.py). It is refused by name first; ZeRO-2 is the tested multi-GPU LoRA layout."""
    cfg = tiny_student().model_copy(update={"base": str(tmp_path / "not-read"), "init_config": None})
    cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"enabled": True})})
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what accelerate launch sets for fsdp2.yaml
    with pytest.raises(DistillError, match="student.lora.enabled: LoRA under FSDP does not train.*zero2.yaml"):
        build_student(cfg, "unused")


def test_lora_on_a_random_init_student_under_deepspeed_is_refused_before_training(teacher, monkeypatch):
    """A DeepSpeed run saves the adapter and merges it into a reload of the base; a student built from
    init_config has no base, so the run failed there, after training, on the main process only."""
    cfg = tiny_student()
    cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"enabled": True})})
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what accelerate launch sets for zero2/zero3.yaml
    with pytest.raises(DistillError, match="a DeepSpeed run merges its LoRA adapter into a reload of the base"):
        build_student(cfg, str(teacher))


def test_an_unmerged_adapter_is_refused_before_a_pipeline_run_starts(tmp_path):
    """``lora.merge: false`` keeps only the adapter; quantize, eval and export load a plain model. A pipeline run
    with it failed on the missing RUN/student/model after the teacher had generated and the student had trained:
    now one error naming the key, before any stage runs; the eval stage alone refuses it the same way."""
    from tests.conftest import run_cli

    args = ["--set", "student.lora.enabled=true", "--set", "student.lora.merge=false"]
    proc = run_cli("run", "tiny", "--out", str(tmp_path / "run"), *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: student.lora.merge: lora.merge is false"), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "prompts").exists()
    proc = run_cli("eval", "tiny", "--out", str(tmp_path / "run"), *args)
    assert proc.returncode == 2 and "student.lora.merge" in proc.stderr, proc.stdout + proc.stderr
