"""Launch-layout checks that must come before anything collective or anything that loads (audit of the scale-out
path: more GPUs asked for than present, sequence-parallel sizes the student's attention heads cannot split into,
layouts `distill student plan` used to plan without complaint)."""

from __future__ import annotations

import re

import pytest

from distill.config import load_entry, parse_override
from distill.errors import DistillError
from tests.conftest import filtered_run, run_cli


def test_more_processes_than_gpus_is_refused_before_the_first_collective(tmp_path, monkeypatch, capsys):
    """zero3.yaml launches 8 processes; on a 4-GPU node accelerate maps LOCAL_RANK modulo the GPU count, so two
    ranks share each GPU and NCCL fails the launch's first barrier ("Duplicate GPU detected") before the clear
    check_gpus error was ever reached: that check ran in build_student, after rank 0 had claimed the stage folder
    and every rank had met at that barrier. The GPUs are the faked part here (this machine has none); the barrier is
    made to fail as NCCL's does."""
    from accelerate import PartialState

    from distill.student import distributed, launch

    run = filtered_run(tmp_path / "run")
    monkeypatch.setattr(distributed, "visible_gpus", lambda: 4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")

    def nccl_barrier(self):
        raise RuntimeError("NCCL error: invalid usage (Duplicate GPU detected)")

    monkeypatch.setattr(PartialState, "wait_for_everyone", nccl_barrier)
    rc = launch.main(["tiny", "--out", str(run)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: train.parallel: 8 processes on this node but 4 GPUs visible"), err
    assert len(err.strip().splitlines()) == 1
    assert not (run / "student").exists()  # the stage folder was not claimed


def _student(ref: str, *overrides: str):
    return load_entry("student", ref, [(*parse_override(text), text) for text in overrides])


@pytest.mark.parametrize("ref,sp,heads", [("r1-distill-qwen-7b", 8, "28 query and 4 key/value heads; it takes 2, 4, 28"),
                                          ("r1-distill-qwen-1.5b", 8, "12 query and 2 key/value heads; it takes 2, 4, "
                                                                      "6, 12")])
def test_a_sequence_parallel_size_the_heads_cannot_split_into_is_refused_before_loading(ref, sp, heads):
    """DeepSpeed's Ulysses refuses it only in accelerate's prepare, after every rank loaded its weights; the plan
    printed it as fitting. Both now refuse it by key, listing the sizes that work (the launch through preflight,
    which build_student calls before the weights load, on any machine)."""
    from distill.student import memory

    student = _student(ref, f"train.parallel.sequence_parallel_size={sp}")
    config = memory.base_config(student)
    for plan in (lambda: memory.plan_recipe(student), lambda: memory.preflight(student, config)):
        with pytest.raises(DistillError, match=f"sequence_parallel_size {sp}: .*{heads}") as exc:
            plan()
        assert exc.value.where == "train.parallel.sequence_parallel_size"
    fine = _student(ref, "train.parallel.sequence_parallel_size=4")
    assert memory.plan_recipe(fine).tokens == fine.train.max_length * fine.train.per_device_train_batch_size // 4


def test_the_plan_refuses_layouts_the_launch_would_refuse():
    from distill.student import memory

    with pytest.raises(DistillError, match="8 processes cannot be split into sequence/context-parallel groups of 3"):
        memory.plan_recipe(_student("r1-distill-qwen-7b", "train.parallel.sequence_parallel_size=3"))
    with pytest.raises(DistillError, match="global_batch_size 100 is not a multiple of .* = 8") as exc:
        memory.plan_recipe(_student("r1-distill-qwen-7b", "train.global_batch_size=100"))
    assert exc.value.where == "train.global_batch_size"
    proc = run_cli("student", "plan", "r1-distill-qwen-7b", "--set", "train.parallel.sequence_parallel_size=8")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and not proc.stdout
    assert proc.stderr.startswith("error: train.parallel.sequence_parallel_size: sequence_parallel_size 8:")


@pytest.mark.parametrize("ref,overrides,refusal", [
    ("r1-distill-qwen-7b", ["train.parallel.context_parallel_size=2"], "context_parallel_size 2 is FSDP2 ring"),
    ("r1-distill-llama-70b", ["train.parallel.context_parallel_size=1", "train.parallel.sequence_parallel_size=2"],
     "sequence_parallel_size 2 is DeepSpeed Ulysses: .* not fsdp"),
    ("r1-distill-qwen-7b", ["train.parallel.accelerate_config=configs/accelerate/ddp.yaml",
                            "train.parallel.sequence_parallel_size=2"], "Ulysses: .* not a plain launch"),
], ids=["ring-on-zero3", "ulysses-on-fsdp2", "ulysses-on-ddp"])
def test_the_plan_refuses_long_context_parallelism_its_accelerate_config_cannot_run(ref, overrides, refusal):
    """The launch refuses Ulysses outside DeepSpeed and ring attention outside FSDP2; the plan printed a memory
    figure for such a recipe (the 7B's ring attention under its zero3.yaml planned as ZeRO-3 over 8 GPUs)."""
    from distill.student import memory

    with pytest.raises(DistillError, match=refusal):
        memory.plan_recipe(_student(ref, *overrides))


def test_suggested_sequence_parallel_sizes_are_ones_the_heads_and_processes_allow():
    """The plan's advice used to double the SP size whatever the student: 4 -> 8 for Qwen2.5-Math-7B's 28 heads."""
    from distill.student import memory

    student = _student("r1-distill-qwen-7b", "train.parallel.sequence_parallel_size=4",
                       "train.gradient_checkpointing=false")
    plan = memory.plan_recipe(student)
    tips = memory.suggestions(student, plan, 79 * memory.GiB)
    assert "sequence_parallel_size=8" not in tips and "gradient_checkpointing=true" in tips
    two = _student("r1-distill-qwen-7b", "train.gradient_checkpointing=false")
    assert "sequence_parallel_size=2 (Ulysses)" in memory.suggestions(two, memory.plan_recipe(two), 79 * memory.GiB)


@pytest.mark.parametrize("parallel,launcher_env,says", [
    (dict(sequence_parallel_size=2), {"ACCELERATE_USE_FSDP": "true"},
     "train.parallel.sequence_parallel_size: sequence_parallel_size 2 is DeepSpeed Ulysses: .* not fsdp"),
    (dict(sequence_parallel_size=2), {}, "sequence_parallel_size 2 is DeepSpeed Ulysses: .* not a plain launch"),
    (dict(context_parallel_size=2), {"ACCELERATE_USE_DEEPSPEED": "true"},
     "train.parallel.context_parallel_size: context_parallel_size 2 is FSDP2 ring attention: .* not deepspeed"),
])
def test_long_context_parallelism_under_the_wrong_launcher_is_refused_before_loading(monkeypatch, parallel,
                                                                                      launcher_env, says):
    """The 14B/32B recipes' Ulysses SP launched with fsdp2.yaml or ddp.yaml, or the 70B's ring attention with a
    ZeRO config, was refused only when the trainer's arguments were built, after every rank had loaded the
    student. check_gpus (which build_student and the launch call before any weights load) refuses it now."""
    from distill.config import ParallelSettings
    from distill.student import distributed

    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(key, raising=False)
    for key, value in launcher_env.items():
        monkeypatch.setenv(key, value)
    layout = ParallelSettings(gpus_per_node=8, **parallel)
    with pytest.raises(DistillError) as exc:
        distributed.check_gpus(layout, visible=8, local_processes=8, world=8)
    assert re.search(says, str(exc.value)), str(exc.value)
    fitting = {"sequence_parallel_size": {"ACCELERATE_USE_DEEPSPEED": "true"},
               "context_parallel_size": {"ACCELERATE_USE_FSDP": "true"}}[next(iter(parallel))]
    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(key, raising=False)
    for key, value in fitting.items():
        monkeypatch.setenv(key, value)
    assert distributed.check_gpus(layout, visible=8, local_processes=8, world=8) is None
