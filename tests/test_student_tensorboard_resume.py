"""A resumed training run's TensorBoard curve holds each step once.

Why: a run killed after logging steps past its last checkpoint logs those steps again when it resumes, and one
that dies before its first checkpoint starts again at step 0; TensorBoard drew both attempts' points in one curve
(steps 4, 5, 6 twice after resuming checkpoint-3; the whole curve twice after a restart).
"""

from __future__ import annotations

import shutil
import warnings

import pytest

from distill.student.miniature import tiny_student, write_kept
from distill.student.model import build_student
from distill.student.train import train_student
from tests.tiny_models import build_tiny_teacher


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tb_resume")
    return str(build_tiny_teacher(tmp / "teacher")), write_kept(tmp / "kept", 24)


def train(inputs, out, **settings):
    warnings.simplefilter("ignore")
    cfg = tiny_student(max_steps=6, save_steps=3, report_to="tensorboard", **settings)
    model, tok = build_student(cfg, inputs[0])
    return train_student(model, tok, cfg, inputs[1], out)


def logged_losses(out):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    return [(e.step, round(e.value, 5)) for e in events.Scalars("train/loss")]


@pytest.mark.parametrize("kept_checkpoints", [2, 1])
def test_a_resumed_or_restarted_run_logs_each_step_once(inputs, tmp_path, kept_checkpoints):
    out = tmp_path / "out"
    first = train(inputs, out, save_total_limit=kept_checkpoints)
    # killed after step 6 was logged, before its checkpoint and model were written: the rerun resumes
    # checkpoint-3 (two kept) or, with only checkpoint-6 kept, starts over at step 0
    shutil.rmtree(out / "model")
    shutil.rmtree(out / "checkpoints" / "checkpoint-6")
    again = train(inputs, out, save_total_limit=kept_checkpoints)
    assert again["resumed_from_step"] == (3 if kept_checkpoints == 2 else 0)
    expected = [(step, round(loss, 5)) for step, loss in first["loss_curve"]]
    assert logged_losses(out) == expected
