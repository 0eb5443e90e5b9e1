"""GKD (logit distillation) trains a student against a teacher that shares its tokenizer, through the same
train_student entry point and recipe fields as SFT.

Why: ``distill_method: gkd`` swaps the loss (generalised JSD to the teacher's distribution) and adds on-policy
generation; both go through TRL's experimental GKD trainer, whose collator and generation path differ from SFT's.
This runs it for real on CPU with a tiny teacher (benchmarks/bench_gkd_vs_sft.py compares accuracies).
"""

from __future__ import annotations

import math

import pytest

from distill.errors import DistillError
from distill.student.miniature import tiny_student, write_kept
from distill.student.model import build_student
from distill.student.train import train_student


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from tests.tiny_models import build_tiny_teacher

    return str(build_tiny_teacher(tmp_path_factory.mktemp("teacher")))


def test_gkd_on_policy_trains_and_saves(teacher, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = tiny_student(max_steps=2, distill_method="gkd",
                       gkd={"teacher": teacher, "lmbda": 1.0, "beta": 0.5, "max_new_tokens": 8})
    model, tok = build_student(cfg, teacher)
    metrics = train_student(model, tok, cfg, write_kept(tmp_path / "kept", 8), tmp_path / "out")
    assert metrics["settings"]["distill_method"] == "gkd" and metrics["steps"] == 2
    losses = [loss for _, loss in metrics["loss_curve"]]
    assert losses and all(math.isfinite(v) and v >= 0 for v in losses)  # a divergence, not a cross-entropy
    saved = tmp_path / "out" / "model"
    assert AutoConfig.from_pretrained(saved).vocab_size == AutoConfig.from_pretrained(teacher).vocab_size
    student = AutoModelForCausalLM.from_pretrained(saved)
    assert student.generation_config.eos_token_id == tok.eos_token_id


def test_gkd_needs_a_teacher(teacher, tmp_path):
    cfg = tiny_student(max_steps=1, distill_method="gkd")
    model, tok = build_student(cfg, teacher)
    with pytest.raises(DistillError, match="needs a teacher"):
        train_student(model, tok, cfg, write_kept(tmp_path / "kept", 4), tmp_path / "out")


def test_frozen_teacher_loads_in_bf16_when_training_in_bf16(teacher, monkeypatch):
    """A fully fine-tuned student keeps float32 master weights under bf16 autocast; the GKD teacher is only read,
    so on a bf16 GPU (its answer given here) it loads in bf16 (a 32B teacher in 66 GB, not 131), and on the CPU it
    matches the student."""
    import torch

    from distill.student import gkd

    model, _ = build_student(tiny_student(), teacher)
    assert next(model.parameters()).dtype is torch.float32
    assert gkd.teacher_dtype(tiny_student(), model) is torch.float32
    monkeypatch.setattr(gkd, "resolve_bf16", lambda requested: True)
    assert gkd.teacher_dtype(tiny_student(), model) is torch.bfloat16
    assert gkd.load_teacher(teacher, gkd.teacher_dtype(tiny_student(), model)).dtype is torch.bfloat16
