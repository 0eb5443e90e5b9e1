"""Data-parallel training gives the same optimisation as one process at the same global batch.

Why: the recipes for 7B-70B students run on 8-64 GPUs and state a *global* batch; per-process gradient accumulation
is derived from the world size (distill/student/distributed.py). If sharding the batch across processes changed
the data order or the loss normalisation, a multi-node run would silently train a different model than the recipe
describes. Here the same tiny training runs as 1 process and as 2 processes (torchrun, gloo, CPU) at global
batch 8, and the logged loss curves must agree.

This file doubles as the worker script: ``torchrun ... tests/test_student_distributed.py TEACHER KEPT OUT``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = 4


def _config():
    from distill.student.miniature import tiny_student

    # global batch 8: 1 process x 4 x accumulation 2, or 2 processes x 4 x accumulation 1; padded (not packed)
    # batches so both runs see identical per-example tensors.
    return tiny_student(max_steps=STEPS, per_device_train_batch_size=4, global_batch_size=8, save_steps=1000,
                        seed=3, threads=1)


def _train(teacher: str, kept: str, out: str) -> dict:
    import warnings

    warnings.simplefilter("ignore")
    from distill.student.model import build_student
    from distill.student.train import train_student

    cfg = _config()
    model, tok = build_student(cfg, teacher, seed=0)
    return train_student(model, tok, cfg, kept, out)



def test_two_processes_match_one_process(tmp_path):
    from distill.student.miniature import write_kept
    from tests.conftest import free_port, worker_env
    from tests.tiny_models import build_tiny_teacher

    teacher = build_tiny_teacher(tmp_path / "teacher")
    kept = write_kept(tmp_path / "kept", 32, seed=1)
    env = worker_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), str(Path(__file__)), str(teacher), str(kept), str(tmp_path / "ddp")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    single = _train(str(teacher), str(kept), str(tmp_path / "single"))  # meanwhile, in this process
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())

    assert single["settings"]["gradient_accumulation_steps"] == 2
    assert ddp["settings"]["world_size"] == 2 and ddp["settings"]["gradient_accumulation_steps"] == 1
    assert single["steps"] == ddp["steps"] == STEPS
    one = [loss for _, loss in single["loss_curve"]]
    two = [loss for _, loss in ddp["loss_curve"]]
    assert len(one) == len(two) == STEPS
    assert one[-1] < one[0]  # it trains
    for a, b in zip(one, two):
        assert abs(a - b) <= 1e-3 * abs(a), (one, two)  # identical here; allow all-reduce rounding
    # only the main process wrote the model, and it is a complete one
    assert (tmp_path / "ddp" / "model" / "model.safetensors").exists()


if __name__ == "__main__":  # a torchrun worker
    _teacher, _kept, _out = sys.argv[1:4]
    metrics = _train(_teacher, _kept, _out)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(_out, "metrics.json").write_text(json.dumps(metrics))


def test_launch_entry_point_writes_the_stage_the_pipeline_reuses(tmp_path):
    """``python -m distill.student.launch`` (what accelerate/torchrun/Slurm start) writes RUN/student exactly as
    pipeline.stage_train would, so ``distill run`` afterwards skips training."""
    import yaml

    from distill.config import load_recipe
    from distill.manifest import Stage
    from distill.pipeline import stage_train
    from distill.student.launch import main
    from distill.student.miniature import TINY_INIT, write_kept
    from tests.tiny_models import build_tiny_teacher

    teacher = build_tiny_teacher(tmp_path / "teacher")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "launch", "data": "tiny-arith", "eval": "tiny-arith",
        "teacher": {"model": str(teacher)},
        "student": {"init_config": dict(TINY_INIT), "train": {"max_steps": 2, "per_device_train_batch_size": 4,
                                                                "report_to": "none", "logging_steps": 1}}}))
    run = tmp_path / "run"
    write_kept(run / "filtered" / "kept", 8)
    Stage("filter", run / "filtered", "test").finish()
    assert main([str(recipe), "--out", str(run)]) == 0
    manifest = json.loads((run / "student" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["metrics"]["steps"] == 2
    assert (run / "student" / "init" / "config.json").exists() and (run / "student" / "model" / "config.json").exists()
    again = stage_train(load_recipe(str(recipe)), run)  # same fingerprint: the pipeline reuses it, no retraining
    assert again["finished_at"] == manifest["finished_at"]


def test_checkpoints_every_save_steps_and_a_rerun_resumes(tmp_path):
    """A long run killed mid-way (preemption, node failure) continues from its last checkpoint, not from zero."""
    import warnings

    from distill.student.miniature import tiny_student, write_kept
    from distill.student.model import build_student
    from distill.student.train import train_student
    from tests.tiny_models import build_tiny_teacher

    warnings.simplefilter("ignore")
    teacher = str(build_tiny_teacher(tmp_path / "teacher"))
    kept = write_kept(tmp_path / "kept", 16)
    first_cfg = tiny_student(max_steps=4, save_steps=2)
    model, tok = build_student(first_cfg, teacher)
    first = train_student(model, tok, first_cfg, kept, tmp_path / "out")
    saved = sorted(p.name for p in (tmp_path / "out" / "checkpoints").glob("checkpoint-*"))
    assert saved == ["checkpoint-4"]  # save_total_limit 1

    longer = tiny_student(max_steps=6, save_steps=2)  # the same run asked to go further
    model, tok = build_student(longer, teacher)
    second = train_student(model, tok, longer, kept, tmp_path / "out")
    assert second["steps"] == 6
    assert second["loss_curve"][:4] == first["loss_curve"]  # steps 1-4 come from the checkpoint, not retrained
    assert (tmp_path / "out" / "checkpoints" / "checkpoint-6").exists()


def test_a_checkpoint_resumes_only_where_its_optimizer_state_can_load(tmp_path, monkeypatch):
    """A one-process (or DDP) checkpoint holds the whole optimizer state: any number of plain processes resumes
    it. A DeepSpeed or FSDP launch would find none of its own state in it, so it is refused by name before
    training starts. (The DeepSpeed- and FSDP-written sides are tested in test_student_sharded.py with real
    ZeRO-3 and FSDP2 checkpoints.)"""
    import pytest

    from distill.errors import DistillError
    from distill.student.miniature import tiny_student, write_kept
    from distill.student.model import build_student
    from distill.student.train import resumable_checkpoint, train_student
    from tests.tiny_models import build_tiny_teacher

    teacher = str(build_tiny_teacher(tmp_path / "teacher"))
    cfg = tiny_student(max_steps=2, save_steps=2)
    model, tok = build_student(cfg, teacher)
    train_student(model, tok, cfg, write_kept(tmp_path / "kept", 8), tmp_path / "out")
    monkeypatch.setenv("WORLD_SIZE", "2")  # a DDP launch
    assert resumable_checkpoint(tmp_path / "out").endswith("checkpoint-2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(DistillError, match="checkpoint-2: written without DeepSpeed or FSDP .optimizer.pt. and this "
                                           "launch is 2 processes under DeepSpeed; resume with the launch that"):
        resumable_checkpoint(tmp_path / "out")
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # before, FileNotFoundError once the weights had loaded
    with pytest.raises(DistillError, match="checkpoint-2: written without DeepSpeed or FSDP .optimizer.pt. and this "
                                           "launch is 2 processes under FSDP"):
        resumable_checkpoint(tmp_path / "out")


def test_a_checkpoint_cut_off_mid_write_is_skipped_on_resume(tmp_path):
    """A job killed while writing checkpoint-6 leaves that folder without trainer_state.json (the Trainer writes it
    last) and with a torn weights file. The rerun resumes from checkpoint-4, the newest complete one, removes the
    torn folder, and writes steps 5-6 again; transformers' get_last_checkpoint would pick checkpoint-6 and fail."""
    import shutil
    import warnings

    from distill.student.miniature import tiny_student, write_kept
    from distill.student.model import build_student
    from distill.student.train import last_checkpoint, train_student
    from tests.tiny_models import build_tiny_teacher

    warnings.simplefilter("ignore")
    teacher = str(build_tiny_teacher(tmp_path / "teacher"))
    kept = write_kept(tmp_path / "kept", 16)
    out = tmp_path / "out"
    first_cfg = tiny_student(max_steps=4, save_steps=2)
    model, tok = build_student(first_cfg, teacher)
    first = train_student(model, tok, first_cfg, kept, out)
    done = out / "checkpoints" / "checkpoint-4"
    torn = out / "checkpoints" / "checkpoint-6"  # what the kill left: weights half written, no trainer state
    torn.mkdir()
    weights = (done / "model.safetensors").read_bytes()
    (torn / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    shutil.copy(done / "config.json", torn / "config.json")

    longer = tiny_student(max_steps=6, save_steps=2)
    model, tok = build_student(longer, teacher)
    second = train_student(model, tok, longer, kept, out)
    assert second["steps"] == 6 and second["loss_curve"][:4] == first["loss_curve"]  # 1-4 from checkpoint-4
    assert [s for s, _ in second["loss_curve"]] == [1, 2, 3, 4, 5, 6]
    assert json.loads((torn / "trainer_state.json").read_text())["global_step"] == 6  # rewritten, complete
    assert last_checkpoint(out) == str(torn)


def _gather_backward_worker(rank: int, port: int, out: str) -> None:
    """One of 4 gloo processes in two groups {0, 1} and {2, 3}: each gathers its group's values with torch's
    differentiable all_gather (as transformers' Ulysses loss does) and backpropagates a weighted sum."""
    import torch
    import torch.distributed as dist

    from distill.student.ulysses import repair_gloo_all_to_all

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=4)
    groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    repair_gloo_all_to_all()
    x = torch.tensor([float(rank + 1)], requires_grad=True)
    gathered = torch.distributed.nn.functional.all_gather(x * 3, group=groups[rank // 2])
    sum((i + 1) * g for i, g in enumerate(gathered)).sum().backward()
    Path(out, f"{rank}.json").write_text(json.dumps({"value": [g.item() for g in gathered], "grad": x.grad.item()}))
    dist.destroy_process_group()


def test_differentiable_gather_backward_runs_over_gloo_subgroups(tmp_path):
    """torch's gloo all-to-all (the gather's backward) passed group ranks where global ones go, so a group
    without global rank 0 failed; ulysses.repair_gloo_all_to_all lets SP x DP run on CPUs. Both groups must
    gather their own values and get the gradient a reduce-scatter gives: 2 ranks x 3 x (group position + 1)."""
    import torch.multiprocessing as mp

    from tests.conftest import free_port

    mp.spawn(_gather_backward_worker, args=(free_port(), str(tmp_path)), nprocs=4, join=True)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(4)]
    assert [r["value"] for r in results] == [[3.0, 6.0], [3.0, 6.0], [9.0, 12.0], [9.0, 12.0]]
    assert [r["grad"] for r in results] == [6.0, 12.0, 6.0, 12.0]


def test_fsdp2_in_bf16_reduces_gradients_in_float32():
    """accelerate's ``mixed_precision: bf16`` sets FSDP2's policy to bf16 throughout, the gradient reduce-scatter
    included; the trainer's policy is changed to reduce in float32 before the model is prepared, compute and
    all-gathers staying bf16. (The real accelerate plugin, set up as AcceleratorState sets it up on GPUs.)"""
    from types import SimpleNamespace

    import torch
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from distill.student.distributed import reduce_gradients_in_float32

    def accelerator(plugin, kind=DistributedType.FSDP):
        return SimpleNamespace(state=SimpleNamespace(distributed_type=kind, fsdp_plugin=plugin))

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    plugin.set_mixed_precision("bf16")
    assert plugin.mixed_precision_policy.reduce_dtype == torch.bfloat16  # accelerate's choice
    assert reduce_gradients_in_float32(accelerator(plugin)) == "float32"
    policy = plugin.mixed_precision_policy
    assert (policy.param_dtype, policy.reduce_dtype, policy.output_dtype) == (torch.bfloat16, torch.float32,
                                                                              torch.bfloat16)
    assert reduce_gradients_in_float32(accelerator(FullyShardedDataParallelPlugin(fsdp_version=2))) == "float32"
    assert reduce_gradients_in_float32(accelerator(plugin, DistributedType.DEEPSPEED)) is None
    fsdp1 = FullyShardedDataParallelPlugin(fsdp_version=1)
    fsdp1.set_mixed_precision("bf16")
    assert reduce_gradients_in_float32(accelerator(fsdp1)) is None and fsdp1.mixed_precision_policy.reduce_dtype == \
        torch.bfloat16
