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
materialises only its shard); under FSDP with cpu_ram_efficient_loading only rank 0 reads the checkpoint. The
untrained baseline (RUN/student/init) is written either way: gathered from the shards under ZeRO-3
(model.save_untrained).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..entry import print_warnings_once, report_error, run_reporting_errors, set_library_env_defaults

set_library_env_defaults()  # before any library loads, as distill/cli.py: no progress bars from every rank


def zero3_init_guard(out_dir: Path, bf16: bool) -> Any:
    """Under ``accelerate launch`` with a DeepSpeed config, creating TrainingArguments registers the DeepSpeed
    config (a weak reference transformers consults in from_pretrained), so ZeRO-3 builds the model already
    partitioned. The returned object must stay alive until the model is loaded. ``bf16``: the precision the
    training arguments will use (train.training_args), so the registered config agrees with them."""
    from .distributed import launcher_kind

    if launcher_kind() != "deepspeed":
        return None
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(out_dir / "checkpoints"), bf16=bf16,
                             use_cpu=not torch.cuda.is_available())


def process_group_kwargs() -> dict[str, str]:
    """How this process joins the group the launcher set up: on GPUs accelerate picks the backend (NCCL); on a
    machine without one, under a DeepSpeed launch, it must be told ``gloo``.

    Why: accelerate only picks a CPU backend for its own MULTI_CPU mode. Under ``ACCELERATE_USE_DEEPSPEED`` on a
    CPU-only machine it lets DeepSpeed join the group and then records no backend, so until the Trainer re-joined
    the group every process believed it was the only one (rank 0 of 1): each claimed the stage folder and wrote
    the untrained baseline, racing on the same files (one rank's atomic rename failed with FileNotFoundError).
    Measured with accelerate 1.15 and DeepSpeed 0.19; the CPU ZeRO-3 tests launch through here."""
    import torch

    from .distributed import world_size

    if torch.cuda.is_available() or world_size() <= 1:
        return {}
    return {"backend": "gloo"}


class _ArgumentParser(argparse.ArgumentParser):
    """argparse's usage error (exit 2), printed once per node: every rank parses the same command line, so a
    missing --out used to print the usage and the error from every rank."""

    def error(self, message: str):  # type: ignore[override]
        report_error(f"{self.format_usage()}{self.prog}: error: {message}")
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    """Run the train stage on this process; errors end it as ``distill`` (cli.main) ends: bad input is one
    ``error:`` line and exit 2, anything else one ``error: internal error`` line and exit 1 (the traceback with
    DISTILL_DEBUG=1), never a traceback from every rank."""
    parser = _ArgumentParser(prog="python -m distill.student.launch", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="a recipes/ name or a recipe YAML path")
    parser.add_argument("--out", required=True, type=Path,
                        help="the run folder (its filtered/ stage complete), on a filesystem every node shares")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. student.train.save_steps=100 (repeatable)")
    parser.add_argument("--force", action="store_true", help="retrain from scratch, discarding RUN/student")
    args = parser.parse_args(argv)

    print_warnings_once()
    return run_reporting_errors(lambda: launch(args))


def launch(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from ..config import load_recipe
    from ..pipeline import check_student_inputs, make_run_folder, need, stage_spec, teacher_model_path
    from ..progress import quiet_library_loggers
    from .distributed import check_gpus
    from .efficiency import resolve_bf16
    from .model import build_student, save_untrained
    from .train import claim_released_if_nothing_trained, read_kept, resumable_checkpoint, train_student
    from .ulysses import repair_gloo_all_to_all

    quiet_library_loggers()
    state = PartialState(**process_group_kwargs())  # joins the launcher's process group (no-op for one process)
    processes = state.num_processes  # as seen before training: who claims the folder and writes the baseline
    if state.backend == "gloo":
        repair_gloo_all_to_all()  # CPU runs of sequence parallelism over 2+ SP groups
    recipe = load_recipe(args.recipe, args.overrides)
    run, s = args.out, recipe.student
    st = stage_spec("train", recipe, run)
    if st.is_complete() and not args.force:
        if state.is_main_process:
            print(f"train stage already complete in {st.folder}")
        state.destroy_process_group()
        return 0
    # More processes than GPUs on a node (zero3.yaml's 8 on a 4-GPU box), or a GPU config on a CPU node: refused
    # here, before the first collective and before rank 0 claims the stage folder. Left to build_student (which
    # checks again and warns about a one-process launch), the barrier below ran first, and NCCL failed it with
    # its own error (two ranks on one GPU: accelerate maps LOCAL_RANK modulo the GPU count) in place of this one.
    check_gpus(s.train.parallel)
    make_run_folder(run)
    need(run / "filtered")
    check_student_inputs(recipe)  # the GKD teacher and the trackers: before the student is built
    if state.is_main_process:
        st.begin(args.force)
    state.wait_for_everyone()
    with claim_released_if_nothing_trained(st, state.is_main_process):
        resumable_checkpoint(st.folder)  # before any weights load: minutes for a 70B
        kept = read_kept(run / "filtered" / "kept")  # so are the traces checked
        guard = zero3_init_guard(st.folder, resolve_bf16(s.train.bf16))
        model, tokenizer = build_student(s, teacher_model_path(recipe), seed=s.train.seed)
        del guard
        params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ZeRO-3: full sizes
        # the eval stage's baseline
        save_untrained(model, tokenizer, st.folder / "init", s, state.is_main_process)
        metrics = train_student(model, tokenizer, s, kept, st.folder,
                                sampling=recipe.teacher.sampling, teacher_model=teacher_model_path(recipe))
    if state.is_main_process:
        st.finish(inputs={"kept": str(run / "filtered" / "kept")},
                  counts={"parameters": params, "examples": metrics["examples"], "processes": processes},
                  metrics=metrics)
    state.wait_for_everyone()
    # Leave the process group while the interpreter is whole, and only on success (torchtitan's rule: a rank that
    # failed mid-collective would hang its peers here). Left to interpreter teardown, gloo's worker threads can
    # free their pending work after Python is gone and abort the rank ("terminate called without an active
    # exception") after everything was saved; NCCL warns that the group was never destroyed.
    state.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
