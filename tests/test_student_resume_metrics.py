"""What a resumed training run trains and reports: no step past the end, and the whole run's loss and this
session's tokens/s (an audit found a rerun after the final checkpoint trained step 41 of 40, and every resumed run
reporting the mean loss of its last steps and a tokens/s counting tokens it never trained on)."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
from safetensors.torch import load_file

from distill.student.miniature import tiny_student, write_kept
from distill.student.model import build_student
from distill.student.train import train_student
from tests.tiny_models import build_tiny_teacher


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume_metrics")
    return str(build_tiny_teacher(tmp / "teacher")), write_kept(tmp / "kept", 24)


def train(inputs, out, **settings):
    warnings.simplefilter("ignore")
    cfg = tiny_student(**settings)
    model, tok = build_student(cfg, inputs[0])
    return train_student(model, tok, cfg, inputs[1], out)


def weights(out):
    return load_file(str(out / "model" / "model.safetensors"))


def test_a_rerun_after_the_final_checkpoint_trains_no_further_step(inputs, tmp_path):
    """Killed after checkpoint-4 of 4 but before its model was saved: the rerun saves the checkpoint's model."""
    first = train(inputs, tmp_path / "out", max_steps=4, save_steps=2)
    shutil.rmtree(tmp_path / "out" / "model")  # the crash came before the trained model was written
    again = train(inputs, tmp_path / "out", max_steps=4, save_steps=2)
    assert again["steps"] == 4 and again["resumed_from_step"] == 4
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").glob("checkpoint-*")) == ["checkpoint-4"]
    assert again["loss_curve"] == first["loss_curve"] and again["train_loss"] == first["train_loss"]
    saved_first = train(inputs, tmp_path / "fresh", max_steps=4, save_steps=2)
    assert saved_first["loss_curve"] == first["loss_curve"]
    fresh, resumed = weights(tmp_path / "fresh"), weights(tmp_path / "out")
    assert all((fresh[k] == resumed[k]).all() for k in fresh), "the rerun saved another model than step 4's"


def test_a_resumed_run_reports_the_whole_runs_loss_and_this_sessions_tokens_per_second(inputs, tmp_path):
    whole = train(inputs, tmp_path / "whole", max_steps=6, save_steps=3, save_total_limit=3)
    assert whole["resumed_from_step"] == 0
    # the run killed after step 3: its folder holds what the uninterrupted run held then
    (tmp_path / "killed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "checkpoint-3",
                    tmp_path / "killed" / "checkpoints" / "checkpoint-3")
    resumed = train(inputs, tmp_path / "killed", max_steps=6, save_steps=3, save_total_limit=3)
    assert resumed["steps"] == 6 and resumed["resumed_from_step"] == 3
    assert resumed["loss_curve"] == whole["loss_curve"] and resumed["tokens"] == whole["tokens"]
    assert resumed["train_loss"] == whole["train_loss"]  # before: the mean of steps 4-6 only
    assert whole["train_loss"] == pytest.approx(sum(loss for _, loss in whole["loss_curve"]) / 6, abs=1e-4)
    state = json.loads((tmp_path / "whole" / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    trained_now = resumed["tokens"] - state["num_input_tokens_seen"]
    assert 0 < trained_now < resumed["tokens"]
    # this session's tokens over this session's seconds (both rounded in the metrics), not the whole run's tokens;
    # seconds are rounded to 0.1 and this session lasts about a second, so that rounding alone is up to 0.05 s
    assert resumed["tokens_per_s"] * resumed["seconds"] == pytest.approx(
        trained_now, rel=0.1, abs=0.05 * resumed["tokens_per_s"] + 1)


def test_a_run_shorter_than_logging_steps_still_logs_its_loss(inputs, tmp_path):
    """Before: no loss logged, no loss.png, final_loss None, for the demo's logging_steps 50 and max_steps 10."""
    short = train(inputs, tmp_path / "short", max_steps=3, logging_steps=50)
    assert [step for step, _ in short["loss_curve"]] == [3] and short["final_loss"] is not None
    assert short["train_loss"] == pytest.approx(short["final_loss"], abs=1e-4)
    assert (tmp_path / "short" / "loss.png").exists()
    uneven = train(inputs, tmp_path / "uneven", max_steps=5, logging_steps=2)
    assert [step for step, _ in uneven["loss_curve"]] == [2, 4, 5]  # the curve reaches the last step


# --- the loss curve and TensorBoard of a resumed run -----------------------------------------------------------------

RESUMED_LOSS = dict(max_steps=8, save_steps=3, save_total_limit=5, logging_steps=4, learning_rate=2e-2)


def test_a_resumed_run_reports_the_unbroken_runs_mean_loss(inputs, tmp_path):
    """The Trainer logs the mean loss of the steps since its last log, and a resumed Trainer counts from the
    checkpoint's step. With save_steps not a multiple of logging_steps (checkpoint-3, logs every 4 steps) the steps
    between the last log and the checkpoint were logged by no one, and the first log after the resume covered only
    the steps since the checkpoint while the run's mean weighed it as a full interval: train_loss differed."""
    unbroken = train(inputs, tmp_path / "unbroken", **RESUMED_LOSS)
    train(inputs, tmp_path / "out", **RESUMED_LOSS)
    shutil.rmtree(tmp_path / "out" / "model")  # killed after checkpoint-3: the later checkpoints never written
    for later in ("checkpoint-6", "checkpoint-8"):
        shutil.rmtree(tmp_path / "out" / "checkpoints" / later)
    resumed = train(inputs, tmp_path / "out", **RESUMED_LOSS)
    assert resumed["resumed_from_step"] == 3
    assert resumed["loss_curve"] == unbroken["loss_curve"]
    assert resumed["train_loss"] == unbroken["train_loss"]
    # the mean of every step's loss: each log is the mean of the steps since the one before
    curve = [(0, None)] + unbroken["loss_curve"]
    assert sum(step - prev for (prev, _), (step, _) in zip(curve, curve[1:])) == 8


def logged_losses(out):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    return [(e.step, round(e.value, 5)) for e in events.Scalars("train/loss")]


@pytest.mark.parametrize("kept_checkpoints", [2, 1])
def test_a_resumed_or_restarted_run_logs_each_step_once_to_tensorboard(inputs, tmp_path, kept_checkpoints):
    """A run killed after logging steps past its last checkpoint logs them again when it resumes, and one that dies
    before its first checkpoint starts again at step 0: TensorBoard drew both attempts' points in one curve (steps
    4-6 twice after resuming checkpoint-3; the whole curve twice after a restart)."""
    settings = dict(max_steps=6, save_steps=3, report_to="tensorboard", save_total_limit=kept_checkpoints)
    out = tmp_path / "out"
    first = train(inputs, out, **settings)
    # killed after step 6 was logged, before its checkpoint and model were written: the rerun resumes
    # checkpoint-3 (two kept) or, with only checkpoint-6 kept, starts over at step 0
    shutil.rmtree(out / "model")
    shutil.rmtree(out / "checkpoints" / "checkpoint-6")
    again = train(inputs, out, **settings)
    assert again["resumed_from_step"] == (3 if kept_checkpoints == 2 else 0)
    assert logged_losses(out) == [(step, round(loss, 5)) for step, loss in first["loss_curve"]]
