"""Peak host memory of the main process and checkpoint size of an FSDP2 run: sharded checkpoints against full ones.

Why: with ``fsdp_state_dict_type: FULL_STATE_DICT`` every checkpoint gathers the whole model and the whole AdamW
state onto the main process's host memory and writes them there (the weights twice: model.safetensors and
pytorch_model_fsdp.bin), 16 bytes per parameter, 1.1 TB at every save of the 70B recipe. SHARDED_STATE_DICT
(what configs/accelerate/fsdp2.yaml now ships) has each process write its own shard through torch's distributed
checkpoint, which also reshards on resume. The trained student is still written whole, once, at the end
(train.save_trained). Both runs here are the shipped fsdp2.yaml on 2 CPU processes (tests/fsdp_on_cpu.py lifts
accelerate's accelerator-only FSDP check), training one step of the same base and saving one checkpoint; the
baseline is the same config with FULL_STATE_DICT. Each process's resident memory is sampled every 20 ms.

    python benchmarks/bench_fsdp_checkpoint.py [--layers 12] [--hidden 1024]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_fsdp_loading import write_base  # noqa: E402


def run(config: Path, recipe: Path, out: Path, port: int) -> tuple[dict[int, int], float]:
    """Launch one FSDP2 run; the peak RSS (bytes) of each rank process, and the wall time."""
    import psutil

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--main_process_port",
           str(port), "-m", "tests.fsdp_on_cpu", str(recipe), "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks: dict[int, int] = {}
    launcher = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            for child in launcher.children(recursive=True):
                rank = child.environ().get("RANK")  # set for the workers torchrun starts, not the launchers
                if rank is not None:
                    peaks[int(rank)] = max(peaks.get(int(rank), 0), child.memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
        time.sleep(0.02)
    output = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"the FSDP2 run failed:\n{output[-3000:]}")
    return peaks, time.perf_counter() - start


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> None:
    from distill.manifest import Stage
    from distill.student.miniature import write_kept

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=1024)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-fsdp-checkpoint-"))
    try:
        base = tmp / "base"
        base.mkdir()
        write_base(base, args.layers, args.hidden)
        recipe = tmp / "recipe.yaml"
        recipe.write_text(yaml.safe_dump({
            "name": "fsdp-checkpoint", "data": "tiny-arith", "eval": "tiny-arith", "teacher": {"model": str(base)},
            "student": {"base": str(base), "train": {
                "max_steps": 1, "save_steps": 1, "per_device_train_batch_size": 1, "global_batch_size": 2,
                "max_length": 256, "report_to": "none", "threads": 1}}}))
        shipped = yaml.safe_load((ROOT / "configs" / "accelerate" / "fsdp2.yaml").read_text())
        results = {}
        for i, kind in enumerate(("FULL_STATE_DICT", "SHARDED_STATE_DICT")):
            cfg = {**shipped, "num_processes": 2, "num_machines": 1, "mixed_precision": "no",
                   "rdzv_backend": "static", "fsdp_config": {**shipped["fsdp_config"], "fsdp_state_dict_type": kind}}
            config = tmp / f"{kind}.yaml"
            config.write_text(yaml.safe_dump(cfg))
            out = tmp / kind
            write_kept(out / "filtered" / "kept", 8)
            Stage("filter", out / "filtered", "bench").finish()
            peaks, seconds = run(config, recipe, out, 29700 + i)
            checkpoint = next((out / "student" / "checkpoints").glob("checkpoint-*"))
            results[kind] = (peaks, seconds, folder_bytes(checkpoint))
        mib = 1 << 20
        for kind, (peaks, seconds, size) in results.items():
            ranks = ", ".join(f"rank {r} {peaks[r] / mib:,.0f} MiB" for r in sorted(peaks))
            label = kind + (" (baseline)" if kind == "FULL_STATE_DICT" else "")
            print(f"{label:30s}: peak RSS {ranks}; checkpoint {size / mib:,.0f} MiB; run {seconds:.1f} s")
        full, sharded = results["FULL_STATE_DICT"], results["SHARDED_STATE_DICT"]
        print(f"ratio: main process peak {full[0][0] / sharded[0][0]:.2f}x lower, checkpoint "
              f"{full[2] / sharded[2]:.2f}x smaller, run {full[1] / sharded[1]:.2f}x faster")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
