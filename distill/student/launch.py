"""The train stage as a multi-process program: ``accelerate launch ... -m distill.student.launch RECIPE --out RUN``.

Why: ``distill run`` / ``distill student train`` train in the calling process, which is right for the CPU demo and
one GPU. A 7B-70B student trains on 8-64 GPUs, where every process must run the same training code but only one
may claim the stage folder, write the untrained baseline, and write the manifest. This module is that entry point;
it writes the same ``RUN/student`` layout and manifest (same fingerprint) as pipeline.stage_train, so a later
``distill run RECIPE --out RUN`` skips training and goes on to quantize/eval/export.

Launch (one node):   accelerate launch --config_file configs/accelerate/zero3.yaml -m distill.student.launch \\
                         RECIPE --out RUN [--set student.train.max_steps=10]
Launch (Slurm):      sbatch --nodes 4 scripts/slurm_train.sbatch RECIPE RUN configs/accelerate/fsdp2.yaml
Loading is sharding-aware: under ZeRO-3 the DeepSpeed config is registered before the weights load (each process
materialises only its shard); under FSDP with cpu_ram_efficient_loading only rank 0 reads the checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def zero3_init_guard(out_dir: Path) -> Any:
    """Under ``accelerate launch`` with a DeepSpeed config, creating TrainingArguments registers the DeepSpeed
    config (a weak reference transformers consults in from_pretrained), so ZeRO-3 builds the model already
    partitioned. The returned object must stay alive until the model is loaded."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() not in ("1", "true"):
        return None
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(out_dir / "checkpoints"), bf16=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distill.student.launch", description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)

    from accelerate import PartialState

    from ..config import load_recipe
    from ..errors import DistillError
    from ..manifest import Stage
    from ..pipeline import need, teacher_model_path
    from .model import build_student, save_model
    from .train import train_student

    state = PartialState()  # joins the process group accelerate/torchrun set up (a no-op for one process)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        run, s = args.out, recipe.student
        st = Stage("train", run / "student", recipe.fingerprint("data", "teacher", "filter", "student"),
                   s.model_dump())
        if st.is_complete() and not args.force:
            if state.is_main_process:
                print(f"train stage already complete in {st.folder}")
            return 0
        need(run / "filtered")
        if state.is_main_process:
            st.begin(args.force)
        state.wait_for_everyone()
        guard = zero3_init_guard(st.folder)
        model, tokenizer = build_student(s, teacher_model_path(recipe), seed=s.train.seed)
        del guard
        sharded_at_load = any(getattr(p, "ds_numel", None) is not None for p in model.parameters())
        params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ZeRO-3: full sizes
        if state.is_main_process and not sharded_at_load:
            save_model(model, tokenizer, st.folder / "init")  # the untrained baseline the eval stage compares to
        metrics = train_student(model, tokenizer, s, run / "filtered" / "kept", st.folder,
                                sampling=recipe.teacher.sampling, teacher_model=teacher_model_path(recipe))
        if state.is_main_process:
            st.finish(inputs={"kept": str(run / "filtered" / "kept")},
                      counts={"parameters": params, "examples": metrics["examples"],
                              "processes": state.num_processes}, metrics=metrics)
        state.wait_for_everyone()
        return 0
    except DistillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
