"""``train.use_liger_kernel`` keeps working after TRL 1.16 deprecated the trainer argument it used to set.

Why: TRL 1.16 warns (FutureWarning, removal in 2.0) whenever SFTConfig's ``use_liger_kernel`` is on, and names
transformers' Hub kernels as the replacement. The recipes ask for Liger on GPUs, so every GPU run would warn and
the next TRL would break them. The trainer arguments must no longer carry the flag on any machine; the request is
honoured by a callback that kernelizes the model (train.liger_callbacks), and a machine without GPU or
``kernels`` package still turns it off with our own RuntimeWarning (efficiency.resolve_liger).
"""

from __future__ import annotations

import warnings

import pytest

from distill.student import train
from distill.student.miniature import tiny_student, write_kept
from distill.student.model import build_student


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from tests.tiny_models import build_tiny_teacher

    return str(build_tiny_teacher(tmp_path_factory.mktemp("teacher")))


def _build_trainer(cfg, teacher, tmp_path):
    """What train_student builds (its own warnings filter aside): the TRL arguments, the trainer, the callbacks."""
    from datasets import Dataset
    from trl import SFTTrainer

    model, tok = build_student(cfg, teacher)
    rows = train.training_pairs(write_kept(tmp_path / "kept", 4), tok)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callbacks = train.liger_callbacks(train.resolved_settings(cfg, model)["use_liger_kernel"])
        args = train.training_args(cfg, tmp_path / "out", tok, model)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             callbacks=callbacks)
    return trainer, caught


def _deprecations(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))
            and "liger" in str(w.message).lower()]


@pytest.mark.parametrize("requested", [None, True, False], ids=["auto", "on", "off"])
def test_cpu_run_has_no_liger_deprecation(teacher, tmp_path, requested):
    trainer, caught = _build_trainer(tiny_student(max_steps=1, use_liger_kernel=requested), teacher, tmp_path)
    assert not _deprecations(caught)
    assert trainer.args.use_liger_kernel is False
    ours = [w for w in caught if issubclass(w.category, RuntimeWarning) and "use_liger_kernel" in str(w.message)]
    assert bool(ours) == bool(requested)  # an explicit request on this CPU says why it is off; auto stays quiet
    assert not any(type(cb).__name__ == "HubKernels" for cb in trainer.callback_handler.callbacks)


def test_liger_resolved_on_means_hub_kernels_not_the_deprecated_argument(teacher, tmp_path, monkeypatch):
    """On a GPU with the kernels package, resolve_liger says on; that machine is not here, so its answer is given."""
    monkeypatch.setattr(train, "resolve_liger", lambda requested: True)
    trainer, caught = _build_trainer(tiny_student(max_steps=1, use_liger_kernel=True), teacher, tmp_path)
    assert not _deprecations(caught)
    assert trainer.args.use_liger_kernel is False
    assert any(type(cb).__name__ == "HubKernels" for cb in trainer.callback_handler.callbacks)


def test_hub_kernels_that_cannot_load_warn_and_leave_the_model_as_is(teacher):
    from distill.student.efficiency import hub_kernels_installed

    if hub_kernels_installed():
        pytest.skip("the kernels package is installed here: kernelize would run")
    model, _ = build_student(tiny_student(), teacher)
    with pytest.warns(RuntimeWarning, match="Hub kernels could not be applied"):
        train.apply_hub_kernels(model)
    assert not model.use_kernels and model.training
