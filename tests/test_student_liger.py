"""``train.use_liger_kernel`` keeps working after TRL 1.16 deprecated the trainer argument it used to set.

Why: TRL 1.16 warns (FutureWarning, removal in 2.0) whenever SFTConfig's ``use_liger_kernel`` is on, and names
transformers' Hub kernels as the replacement. The recipes ask for Liger on GPUs, so every GPU run would warn and
the next TRL would break them. The trainer arguments must no longer carry the flag on any machine; the request is
honoured by liger-kernel's own patches (train.liger_package_kernels) or by Hub kernels (train.liger_callbacks),
and a machine without GPU or
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
        callbacks = train.liger_callbacks(train.resolved_settings(cfg, model)["liger_provider"])
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
    """On a GPU with the kernels package (and no liger-kernel), resolve_liger says on and the provider is the Hub;
    that machine is not here, so its answers are given."""
    monkeypatch.setattr(train, "resolve_liger", lambda requested: True)
    monkeypatch.setattr(train, "liger_provider", lambda: "hub")
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


def test_module_level_patches_end_with_training():
    """liger-kernel rebinds names in the model's modeling module (the RoPE function, the RMSNorm class), so every
    model built later in the process would run Triton kernels, on the CPU too: the pipeline's evaluation of the
    CPU teacher after a GPU training failed that way on an H200. train.module_patches_undone puts the module
    back when training ends, errors included, while the instance patched inside keeps its kernels."""
    from transformers import Qwen2Config
    from transformers.models.qwen2 import modeling_qwen2

    original_rope, original_norm = modeling_qwen2.apply_rotary_pos_emb, modeling_qwen2.Qwen2RMSNorm

    class PatchedNorm(original_norm):
        pass

    def patched_rope(*args, **kwargs):
        return original_rope(*args, **kwargs)

    config = Qwen2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=32)
    with pytest.raises(RuntimeError, match="mid-training"):
        with train.module_patches_undone(modeling_qwen2):
            modeling_qwen2.apply_rotary_pos_emb = patched_rope
            modeling_qwen2.Qwen2RMSNorm = PatchedNorm
            modeling_qwen2.LIGER_ADDED = True
            patched = modeling_qwen2.Qwen2ForCausalLM(config)
            raise RuntimeError("mid-training")
    assert modeling_qwen2.apply_rotary_pos_emb is original_rope and modeling_qwen2.Qwen2RMSNorm is original_norm
    assert not hasattr(modeling_qwen2, "LIGER_ADDED")
    assert type(patched.model.norm) is PatchedNorm  # the trained instance keeps its kernels
    assert type(modeling_qwen2.Qwen2ForCausalLM(config).model.norm) is original_norm  # later models do not


def test_liger_package_kernels_leave_a_model_alone_without_the_package(teacher):
    from distill.student.efficiency import liger_provider

    if liger_provider() == "liger_kernel":
        pytest.skip("liger-kernel is installed here")
    model, _ = build_student(tiny_student(), teacher)
    before = {name: type(m) for name, m in model.named_modules()}
    with train.liger_package_kernels(model, liger_provider()):
        assert {name: type(m) for name, m in model.named_modules()} == before
