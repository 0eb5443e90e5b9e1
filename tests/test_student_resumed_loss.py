"""A resumed run reports the same mean training loss as an unbroken one, whatever logging_steps and save_steps are.

Why: the Trainer logs the mean loss of the steps since its last log, and a resumed Trainer counts from the
checkpoint's step. With save_steps not a multiple of logging_steps (checkpoint-3, logs every 4 steps) the steps
between the last log and the checkpoint were never logged by anyone, and the first log after the resume covered
only the steps since the checkpoint while the run's mean weighed it as a full logging interval: train_loss
differed from the unbroken run's.
"""

from __future__ import annotations

import shutil
import warnings

from distill.student.miniature import tiny_student, write_kept
from distill.student.model import build_student
from distill.student.train import train_student
from tests.tiny_models import build_tiny_teacher


def train(teacher, kept, out):
    warnings.simplefilter("ignore")
    cfg = tiny_student(max_steps=8, save_steps=3, save_total_limit=5, logging_steps=4, learning_rate=2e-2)
    model, tok = build_student(cfg, teacher)
    return train_student(model, tok, cfg, kept, out)


def test_a_resumed_run_reports_the_unbroken_runs_mean_loss(tmp_path):
    teacher, kept = str(build_tiny_teacher(tmp_path / "teacher")), write_kept(tmp_path / "kept", 24)
    unbroken = train(teacher, kept, tmp_path / "unbroken")
    train(teacher, kept, tmp_path / "out")
    shutil.rmtree(tmp_path / "out" / "model")  # killed after checkpoint-3: the later checkpoints never written
    for later in ("checkpoint-6", "checkpoint-8"):
        shutil.rmtree(tmp_path / "out" / "checkpoints" / later)
    resumed = train(teacher, kept, tmp_path / "out")
    assert resumed["resumed_from_step"] == 3
    assert resumed["loss_curve"] == unbroken["loss_curve"]
    assert resumed["train_loss"] == unbroken["train_loss"]
    # the mean of every step's loss: each log is the mean of the steps since the one before
    curve = [(0, None)] + unbroken["loss_curve"]
    steps = sum(step - prev for (prev, _), (step, _) in zip(curve, curve[1:]))
    assert steps == 8
