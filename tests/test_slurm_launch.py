"""scripts/slurm_train.sbatch trains across two "nodes" that meet through accelerate's c10d rendezvous.

Why: the Slurm template is how the 32B/70B recipes run (2-8 nodes), and its argument plumbing (machine rank,
master address, process counts, the recipe's accelerate config, --set overrides) only shows its bugs on a real
launch. Slurm itself cannot run here, so ``srun`` and ``scontrol`` are two-line stand-ins on PATH: ``srun`` starts
the script's per-node command once per node with SLURM_NODEID set, as Slurm does, and ``scontrol show
hostnames`` names this machine. Everything after that is real: two ``accelerate launch`` agents (one per node)
rendezvous on loopback, DeepSpeed ZeRO-3 or FSDP2 shards the student over both, and the stage is written once.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port, worker_env

ROOT = Path(__file__).resolve().parent.parent

SRUN = """#!/bin/bash
# Slurm stand-in: drop srun's own options, run the command once per node with SLURM_NODEID, fail if any fails.
while [[ $1 == --* ]]; do shift; done
pids=()
for (( node = 0; node < SLURM_NNODES; node++ )); do SLURM_NODEID=$node "$@" & pids+=($!); done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
"""
SCONTROL = """#!/bin/bash
echo 127.0.0.1
"""



@pytest.mark.parametrize("layout", ["zero3", "fsdp2"])
def test_sbatch_script_trains_over_two_nodes(tmp_path, layout):
    """ZeRO-3 (the 32B recipe) and FSDP2 (the 70B recipe). FSDP2 runs on CPU processes through
    tests/fsdp_on_cpu.py, loaded into every worker by a sitecustomize on the workers' PYTHONPATH: the script starts
    ``python -m distill.student.launch`` itself. On the second "node" the student is built empty and sent its
    shards by the first (distributed.receives_weights_from_main)."""
    from distill.manifest import Stage
    from distill.student.miniature import write_kept
    from tests.test_student_sharded import cpu_variant
    from tests.tiny_models import build_tiny_teacher

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)

    base = build_tiny_teacher(tmp_path / "base")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "slurm", "data": "tiny-arith", "eval": "tiny-arith", "teacher": {"model": str(base)},
        "student": {"base": str(base), "train": {
            "max_steps": 3, "per_device_train_batch_size": 4, "global_batch_size": 8, "max_length": 512,
            "learning_rate": 3e-3, "logging_steps": 1, "report_to": "none", "threads": 1,
            "parallel": {"nodes": 2, "gpus_per_node": 1}}}}))
    run = tmp_path / "run"
    write_kept(run / "filtered" / "kept", 32, seed=1)
    Stage("filter", run / "filtered", "test").finish()
    config = cpu_variant(f"configs/accelerate/{layout}.yaml", tmp_path / f"{layout}.yaml")

    env = worker_env(PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=sys.executable, SLURM_SUBMIT_DIR=str(tmp_path),
                     SLURM_NNODES="2", SLURM_GPUS_ON_NODE="1", SLURM_JOB_NODELIST="node[0-1]",
                     MASTER_PORT=str(free_port()))
    if layout == "fsdp2":
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text("import tests.fsdp_on_cpu  # noqa: F401\n")
        env["PYTHONPATH"] = f"{site}{os.pathsep}{env['PYTHONPATH']}"
    env.pop("HF_HUB_OFFLINE", None)
    # the config given both ways the script takes it: as its third argument, or as a --set of the recipe's key
    how = [str(config)] if layout == "zero3" else ["--set", f"student.train.parallel.accelerate_config={config}"]
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "slurm_train.sbatch"), str(recipe), str(run), *how,
                           "--set", "student.train.save_steps=2"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "nodes=2 gpus/node=1" in proc.stdout and f"config={config} " in proc.stdout

    manifest = json.loads((run / "student" / "manifest.json").read_text())
    settings = manifest["metrics"]["settings"]
    assert manifest["counts"]["processes"] == 2 and settings["world_size"] == 2
    assert settings["sharding"] == {"zero3": "zero-3", "fsdp2": "fsdp2"}[layout]
    assert settings.get("fsdp_gradient_reduce_dtype") == {"zero3": None, "fsdp2": "float32"}[layout]
    assert settings["gradient_accumulation_steps"] == 1  # 2 nodes x 4 x 1
    assert manifest["metrics"]["steps"] == 3
    assert manifest["config"]["train"]["save_steps"] == 2  # the --set after the config reached the recipe
    # the last checkpoint holds both ranks' parts (one per "node"), ready for a resubmission
    checkpoint = run / "student" / "checkpoints" / "checkpoint-3"
    if layout == "zero3":
        shards = sorted(p.name for p in (checkpoint / "global_step3").iterdir())
        assert shards == [f"zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt" for r in (0, 1)
                          for kind in ("model", "optim")]
    else:
        for part in ("pytorch_model_fsdp_0", "optimizer_0"):
            assert sorted(p.name for p in (checkpoint / part).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert (run / "student" / "model" / "model.safetensors").exists()
    assert (tmp_path / "logs").is_dir()  # where the #SBATCH --output lines point
