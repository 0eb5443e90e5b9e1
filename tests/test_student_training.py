"""The student's training text keeps the reasoning, the loss mask covers the completion only (token by token),
and a trained student stops after its answer (REFERENCE.md pitfalls 1 and 2)."""

from __future__ import annotations

import json

from distill.config import StudentConfig
from distill.records import ShardedJsonlStore
from distill.student.model import build_student
from tests.conftest import TINY_TEACHER


def test_completion_mask_token_by_token(tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from distill.chat_template import render_training_pair

    cfg = StudentConfig(init_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                     "num_attention_heads": 2, "num_key_value_heads": 1})
    model, tok = build_student(cfg, str(TINY_TEACHER))
    prompt, completion = render_training_pair(tok, "Mia has 3 apples. She buys 2 more.",
                                              "Mia starts with 3 apples.\n3 + 2 = 5.", "The answer is \\boxed{5}.")
    args = SFTConfig(output_dir=str(tmp_path), completion_only_loss=True, report_to="none", use_cpu=True,
                     eos_token=tok.eos_token, pad_token=tok.pad_token, max_length=256)
    trainer = SFTTrainer(model=model, args=args, processing_class=tok,
                         train_dataset=Dataset.from_list([{"prompt": prompt, "completion": completion}]))
    row = trainer.train_dataset[0]
    # TRL >= 1.x folds the completion mask into "labels" (-100 outside the completion) during preparation
    ids = row["input_ids"]
    mask = row["completion_mask"] if "completion_mask" in row else [int(l != -100) for l in row["labels"]]
    learned = [t for t, m in zip(ids, mask) if m]
    ignored = [t for t, m in zip(ids, mask) if not m]
    assert tok.decode(ignored) == prompt
    assert tok.decode(learned) == completion
    assert "Mia starts with 3 apples." in tok.decode(learned) and learned[-1] == tok.eos_token_id
    batch = trainer.data_collator([row])
    labels = batch["labels"][0].tolist()
    assert all(l == -100 for l, m in zip(labels, mask) if not m)
    assert [l for l, m in zip(labels, mask) if m] == learned


def test_trained_student_stops_and_learned(small_run):
    report = json.loads((small_run / "report.json").read_text())
    assert report["student"]["stopped_fraction"] >= 0.9, report["student"]
    samples = list(ShardedJsonlStore(small_run / "eval" / "student" / "tiny-arith-heldout" / "samples"))
    assert sum(s["finish_reason"] == "stop" for s in samples) / len(samples) >= 0.9
    gen_cfg = json.loads((small_run / "student" / "model" / "generation_config.json").read_text())
    tok_cfg = json.loads((small_run / "student" / "model" / "tokenizer_config.json").read_text())
    assert tok_cfg["eos_token"] == "<｜end▁of▁sentence｜>"
    from transformers import AutoTokenizer

    eos_id = AutoTokenizer.from_pretrained(small_run / "student" / "model").eos_token_id
    assert gen_cfg["eos_token_id"] in (eos_id, [eos_id])
    assert report["student"]["pass@1"] > report["student_untrained"]["pass@1"]


def test_training_text_carries_the_reasoning(small_run):
    kept = list(ShardedJsonlStore(small_run / "filtered" / "kept"))
    assert kept and all(k["reasoning"] for k in kept)
    loss_png = small_run / "student" / "loss.png"
    assert loss_png.exists() and loss_png.stat().st_size > 1000


def _long_and_short_kept(folder, tokenizer):
    """8 kept traces, two of them 12 times longer; and a max_length between the longest short one and the
    shortest long one (tokens of the rendered text, as TRL tokenizes it)."""
    from distill.student.miniature import write_kept
    from distill.student.train import token_lengths, training_pairs

    kept = write_kept(folder, 8, repeat_reasoning=[1, 1, 1, 12])
    lengths = token_lengths([p["prompt"] + p["completion"] for p in training_pairs(kept, tokenizer)], tokenizer)
    short, long = sorted(lengths)[:6], sorted(lengths)[6:]
    assert max(short) < min(long)
    return kept, (max(short) + min(long)) // 2


def test_traces_longer_than_max_length_are_left_out_not_cut(tmp_path, capsys):
    """A trace cut at max_length ends mid-reasoning, without its answer and EOS: trained on, it teaches the student
    not to stop (pitfall 1). Such traces are left out before TRL sees them, counted in the metrics, and a warning
    names the setting; every row the trainer gets still ends with a trained EOS."""
    from trl import SFTTrainer

    from distill.student.miniature import tiny_student
    from distill.student.train import train_student

    seen = []
    original = SFTTrainer.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.extend(self.train_dataset)

    cfg = tiny_student(max_steps=2)
    model, tok = build_student(cfg, str(TINY_TEACHER))
    kept, max_length = _long_and_short_kept(tmp_path / "kept", tok)
    cfg.train.max_length = max_length
    SFTTrainer.__init__ = spy
    try:
        metrics = train_student(model, tok, cfg, kept, tmp_path / "out")
    finally:
        SFTTrainer.__init__ = original
    assert metrics["examples"] == 6 and metrics["overlong_dropped"] == 2
    assert f"2 of 8 traces (25.0%) are longer than train.max_length ({max_length} tokens)" in capsys.readouterr().err
    assert len(seen) == 6
    assert all(row["input_ids"][-1] == tok.eos_token_id and row["labels"][-1] == tok.eos_token_id for row in seen)


def test_all_traces_too_long_is_one_clear_error(tmp_path):
    import pytest

    from distill.errors import DistillError
    from distill.student.miniature import tiny_student, write_kept
    from distill.student.train import train_student

    cfg = tiny_student(max_steps=1, max_length=16)
    model, tok = build_student(cfg, str(TINY_TEACHER))
    with pytest.raises(DistillError, match="every one of the 4 kept traces is longer than 16 tokens") as err:
        train_student(model, tok, cfg, write_kept(tmp_path / "kept", 4), tmp_path / "out")
    assert err.value.where == "student.train.max_length"
