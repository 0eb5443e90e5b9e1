"""scripts/slurm_train.sbatch against the job Slurm gave it: the node count the recipe is laid out for, and the
CPUs its step runs on. ``srun``/``scontrol`` are stand-ins that record how they were called and start nothing."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from tests.conftest import ROOT, free_port, worker_env

SRUN_RECORDS = """#!/bin/bash
printf '%s\\n' "$@" > "$RECORD"
"""


def _sbatch(tmp_path, *args, nodes="2", cpus="64"):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("srun", SRUN_RECORDS), ("scontrol", "#!/bin/bash\necho gpu-node-017\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    env = worker_env(PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=sys.executable, SLURM_SUBMIT_DIR=str(ROOT),
                     SLURM_NNODES=nodes, SLURM_GPUS_ON_NODE="8", SLURM_JOB_NODELIST="gpu-node-[017-018]",
                     SLURM_CPUS_PER_TASK=cpus, MASTER_PORT=str(free_port()), RECORD=str(tmp_path / "srun-args"))
    return subprocess.run(["bash", str(ROOT / "scripts" / "slurm_train.sbatch"), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("recipe_nodes,job_nodes", [("4", "2"), ("1", "2")])
def test_a_job_with_other_nodes_than_the_recipe_is_refused_before_any_node_starts(tmp_path, recipe_nodes, job_nodes):
    """The template's own ``#SBATCH --nodes=2`` ran the 70B recipe (4 nodes: 16 B of states per parameter over 32
    GPUs) on 2 nodes when ``--nodes 4`` was left off: 79.2 GiB of states per 80 GB GPU, a warning from each rank,
    then out of memory once the 70B had loaded. The recipe's ``train.parallel.nodes`` was read by nothing."""
    proc = _sbatch(tmp_path, "tiny", str(tmp_path / "run"), "--set", f"student.train.parallel.nodes={recipe_nodes}",
                   nodes=job_nodes)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: student.train.parallel.nodes: this job has {job_nodes} node(s) and the recipe is laid out for "
        f"{recipe_nodes}: submit it with sbatch --nodes {recipe_nodes}, or add --set student.train.parallel.nodes="
        f"{job_nodes} (the global batch is kept; `distill student plan` shows the memory per GPU)"], proc.stderr
    assert not (tmp_path / "srun-args").exists()


def test_the_step_gets_the_jobs_cpus(tmp_path):
    """Since Slurm 22.05 ``srun`` inside a batch job no longer inherits ``--cpus-per-task`` from the job
    (SLURM_CPUS_PER_TASK): the step got one CPU per task, so each node's 8 training processes shared one core."""
    proc = _sbatch(tmp_path, "tiny", str(tmp_path / "run"), "--set", "student.train.parallel.nodes=2", cpus="48")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    srun_args = (tmp_path / "srun-args").read_text().splitlines()
    assert "--cpus-per-task=48" in srun_args[:srun_args.index("bash")], srun_args
