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


ACCELERATE_STUB = """#!/bin/bash
# accelerate stand-in: keep each node's command line (NUL-separated), start nothing
printf '%s\\0' "$@" > "$ARGS_DIR/node-$SLURM_NODEID"
"""


def _rendezvous_of(argv: list[str]):
    """torchrun's LaunchConfig for an ``accelerate launch`` command line, derived as accelerate 1.15 derives it for a
    multi-GPU/FSDP or DeepSpeed launch (its parser, its config-file defaults, prepare_multi_gpu_env or
    prepare_deepspeed_cmd_env, whose "standard" multi-node launcher is torchrun, and its filter to torchrun's
    arguments)."""
    import torch.distributed.run as torchrun
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import _filter_args, prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    if args.use_deepspeed:
        assert defaults.deepspeed_config["deepspeed_multinode_launcher"] == "standard"  # torchrun on every node
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        prepare_deepspeed_cmd_env(args)
    else:
        prepare_multi_gpu_env(args)
    args = _filter_args(args, torchrun.get_args_parser(), ["--training_script", args.training_script,
                                                           "--training_script_args", args.training_script_args])
    return torchrun.config_from_args(args)[0]


@pytest.mark.parametrize("layout", ["zero3", "fsdp2"])
def test_every_node_meets_at_the_first_nodes_address(tmp_path, monkeypatch, layout):
    """Each node's torchrun agent must rendezvous at MASTER_ADDR:MASTER_PORT (the first node of the job).

    Why: with ``--same_network`` accelerate hands torchrun MASTER_ADDR/MASTER_PORT, which torch's c10d
    rendezvous ignores ("master_addr is only used for static rdzv_backend"), and no rendezvous endpoint: every node
    then met at its own localhost:29400, so on a real cluster each node waited for the others alone until the
    rendezvous timed out. On one machine (the two-"node" test above) the nodes still met on loopback, so only the
    endpoint itself shows it."""
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # torchrun would set it here
    port = str(free_port())  # accelerate checks that the first node's port is free
    bin_dir, args_dir = tmp_path / "bin", tmp_path / "args"
    bin_dir.mkdir()
    args_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", "#!/bin/bash\necho gpu-node-017\n"),
                       ("accelerate", ACCELERATE_STUB)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    env = worker_env(PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=sys.executable,
                     ACCELERATE=str(bin_dir / "accelerate"), ARGS_DIR=str(args_dir), SLURM_SUBMIT_DIR=str(ROOT), SLURM_NNODES="2", SLURM_GPUS_ON_NODE="8",
                     SLURM_JOB_NODELIST="gpu-node-[017-018]", MASTER_PORT=port)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "slurm_train.sbatch"), "tiny", str(tmp_path / "run"),
                           f"configs/accelerate/{layout}.yaml", "--set", "student.train.parallel.nodes=2"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    for node in (0, 1):
        argv = (args_dir / f"node-{node}").read_bytes().decode().split("\0")[:-1]
        assert argv[0] == "launch"
        config = _rendezvous_of(argv[1:])
        assert (config.rdzv_backend, config.rdzv_endpoint) == ("c10d", f"gpu-node-017:{port}")
        assert (config.min_nodes, config.max_nodes, config.nproc_per_node) == (2, 2, 8)  # 16 processes in all
        # the first node hosts the rendezvous store, said outright: nodes sharing a host (the two-"node" test above)
        # both took it by torch's hostname guess, and the first node's accelerate then refused its port as in use
        assert config.rdzv_configs["is_host"] == ("true" if node == 0 else "false")
