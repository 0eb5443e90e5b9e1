"""The ``distill`` command line: one group per pipeline stage, plus ``run`` (all stages) and ``demo``.

Every stage command works on a run folder (``--out``) with the layout documented in :mod:`distill.pipeline`, so
stages can be run one by one or all at once, and rerun after a crash.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .entry import print_warnings_once, run_reporting_errors, set_library_env_defaults
from .errors import DistillError

set_library_env_defaults()

app = typer.Typer(help="Distill DeepSeek-R1-style reasoning into small students: teacher -> filter -> student "
                       "-> eval -> export.", no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False)
teacher_app = typer.Typer(help="Teacher stage: generate reasoning traces and filter them.", no_args_is_help=True)
student_app = typer.Typer(help="Student stage: fine-tune a student on the kept traces (SFT, or GKD logit "
                                "distillation), and plan its GPU memory before renting GPUs.", no_args_is_help=True)
export_app = typer.Typer(help="Closing stage: quantize, export with a model card, push to the Hub.",
                         no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")
app.add_typer(student_app, name="student")
app.add_typer(export_app, name="export")

RecipeArg = Annotated[str, typer.Argument(help="Recipe name in recipes/ or path to a recipe YAML.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Run folder (created if missing).")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", "-s", help="Override a recipe key, e.g. --set teacher.sampling.n=8 (repeatable).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Redo the stage even if its output is complete.")]


def _recipe(recipe: str, overrides: list[str] | None):
    from .config import load_recipe

    return load_recipe(recipe, overrides or [])


def _run_stages(recipe: str, out: Path, overrides, force: bool, stages: list[str]) -> None:
    from .pipeline import run_pipeline

    run_pipeline(_recipe(recipe, overrides), out, force=force, only=stages)


@teacher_app.command("generate")
def teacher_generate(recipe: RecipeArg = "tiny", out: OutOpt = Path("runs/tiny"), set_: SetOpt = None,
                     force: ForceOpt = False,
                     shard: Annotated[Optional[str], typer.Option(
                         help="Only shard i of n (e.g. 0/4), for one data-parallel replica; join with "
                              "`distill teacher merge`.")] = None,
                     replicas: Annotated[Optional[int], typer.Option(
                         help="Run N data-parallel replicas as Ray tasks (one engine each, TP x PP GPUs for vLLM) "
                              "and merge them.")] = None,
                     ray_address: Annotated[Optional[str], typer.Option(
                         help="Ray cluster to use with --replicas (auto, ray://HOST:10001); default: start a "
                              "local one.")] = None) -> None:
    """Write the recipe's prompts and sample the teacher on them (resumable; RUN/generations/)."""
    from .pipeline import stage_generate, stage_prompts
    from .teacher.shard import parse_shard

    r = _recipe(recipe, set_)
    if replicas is not None:
        from .teacher.ray_launch import run_replicas

        if shard:
            raise DistillError("--shard and --replicas exclude each other: --replicas runs every shard itself")
        m = run_replicas(r, out, replicas, address=ray_address, force=force)
        typer.echo(f"generations: {m['counts']['samples_total']} samples from {replicas} replicas -> "
                   f"{out / 'generations'}")
        return
    part = parse_shard(shard) if shard else None
    stage_prompts(r, out)
    m = stage_generate(r, out, force=force, shard=part)
    typer.echo(f"generations: {m['counts'].get('samples_total')} samples in {m.get('seconds')}s -> "
               f"{out / ('generations' if part is None else f'generations-parts/{part[0]}-of-{part[1]}')}")


@teacher_app.command("merge")
def teacher_merge(recipe: RecipeArg = "tiny", out: OutOpt = Path("runs/tiny"),
                  shards: Annotated[int, typer.Option(help="How many shards were generated.")] = 1,
                  set_: SetOpt = None, force: ForceOpt = False) -> None:
    """Join the outputs of `teacher generate --shard i/n` (all n complete) into RUN/generations."""
    from .pipeline import stage_merge

    m = stage_merge(_recipe(recipe, set_), out, shards, force=force)
    typer.echo(f"merged {shards} shards: {m['counts']['samples_total']} samples")


@teacher_app.command("import")
def teacher_import(fmt: Annotated[str, typer.Argument(help="openr1-math, openthoughts, bespoke-stratos or s1k.")],
                   source: Annotated[str, typer.Argument(help="A local .jsonl/.parquet file or a Hub dataset id.")],
                   out: OutOpt = Path("runs/imported"),
                   split: Annotated[str, typer.Option(help="Dataset split (Hub ids).")] = "train",
                   limit: Annotated[Optional[int], typer.Option(help="Import at most this many rows.")] = None) -> None:
    """Import published traces into RUN/generations, ready for `teacher filter` and `student train`."""
    from .data.importers import import_traces
    from .manifest import Stage
    from .pipeline import make_run_folder
    from .records import ShardedJsonlStore

    make_run_folder(out)
    st = Stage("generate", out / "generations", f"import:{fmt}:{source}:{split}:{limit}",
               {"format": fmt, "source": source, "split": split, "limit": limit})
    st.begin(force=True)
    with ShardedJsonlStore(st.folder) as store:
        n = 0
        batch = []
        for gen in import_traces(fmt, source, split, limit):
            batch.append(gen.to_dict())
            if len(batch) >= 1000:
                n += store.append(batch)
                batch.clear()
        n += store.append(batch)
    st.finish(inputs={"source": source}, counts={"samples_total": n})
    typer.echo(f"imported {n} traces from {source} ({fmt}) -> {st.folder}")


@teacher_app.command("filter")
def teacher_filter(recipe: RecipeArg = "tiny", out: OutOpt = Path("runs/tiny"), set_: SetOpt = None,
                   force: ForceOpt = False) -> None:
    """Check every generation (truncation, think format, math answer, duplicates); RUN/filtered/{kept,rejected}."""
    _run_stages(recipe, out, set_, force, ["filter"])


@student_app.command("train")
def student_train(recipe: RecipeArg = "tiny", out: OutOpt = Path("runs/tiny"), set_: SetOpt = None,
                  force: ForceOpt = False) -> None:
    """Train the recipe's student on RUN/filtered/kept with TRL: SFT (completion-only loss), or GKD logit
    distillation (train.distill_method: gkd); RUN/student/model."""
    _run_stages(recipe, out, set_, force, ["train"])


@student_app.command("plan")
def student_plan(student: Annotated[str, typer.Argument(help="Student name in students/ or path to a student YAML.")],
                 set_: Annotated[Optional[list[str]], typer.Option(
                     "--set", "-s", help="Override a student key, e.g. --set train.max_length=16384.")] = None,
                 gpu_memory_gib: Annotated[Optional[float], typer.Option(
                     help="Memory of each GPU (default: the recipe's train.parallel.gpu_memory_gib).")] = None) -> None:
    """Per-GPU memory of a student recipe before any GPU is rented: weights, gradients, optimizer, activations,
    logits. Exits 1 when it does not fit."""
    from .config import load_entry, parse_override
    from .student.memory import GiB, plan_recipe, suggestions

    if gpu_memory_gib is not None and not (math.isfinite(gpu_memory_gib) and gpu_memory_gib > 0):
        raise DistillError(f"must be a positive number of GiB, not {gpu_memory_gib:g}", where="--gpu-memory-gib")
    st = load_entry("student", student, [(*parse_override(text), text) for text in set_ or []])
    plan = plan_recipe(st)
    gpu = int((gpu_memory_gib if gpu_memory_gib is not None else st.train.parallel.gpu_memory_gib) * GiB)
    typer.echo(plan.summary(st))
    if st.train.distill_method == "gkd" and not st.train.gkd.teacher:
        typer.echo("GKD teacher not counted: train.gkd.teacher is unset (the run's teacher model is used)")
    typer.echo(plan.table(gpu))
    if not plan.fits(gpu):
        typer.echo(f"to fit: {suggestions(st, plan, gpu)}")
        raise typer.Exit(1)


@app.command("eval")
def eval_cmd(recipe: RecipeArg = "tiny", out: OutOpt = Path("runs/tiny"), set_: SetOpt = None,
             model: Annotated[Optional[str], typer.Option(help="Evaluate only this model folder or id.")] = None,
             label: Annotated[str, typer.Option(help="Name for --model in the results.")] = "model",
             force: ForceOpt = False) -> None:
    """Score models with the R1 protocol (pass@1 over k samples, cons@k) on the recipe's benchmarks."""
    if model is None:
        _run_stages(recipe, out, set_, force, ["eval"])
        return
    from .evaluate.run import evaluate

    r = _recipe(recipe, set_)
    for bench in r.eval.benchmarks:
        res = evaluate(model, bench, out / "eval" / label / bench.name, name=label)
        typer.echo(f"{label} on {bench.name}: " + ", ".join(f"{k} {v}" for k, v in res.items()
                                                             if k not in ("model", "benchmark")))


@export_app.command("quantize")
def export_quantize(model: Annotated[Path, typer.Option(help="A saved model folder.")],
                    out: OutOpt,
                    method: Annotated[str, typer.Option(help="bnb-int8 or bnb-nf4.")] = "bnb-int8") -> None:
    """Quantize a model folder with bitsandbytes; the result reloads quantized with from_pretrained."""
    from .export.quantize import quantize

    info = quantize(model, out, method)
    typer.echo(f"{method}: {info['source_size_bytes']:,} -> {info['size_bytes']:,} bytes in {out}")


@export_app.command("gguf")
def export_gguf_cmd(model: Annotated[Path, typer.Option(help="A saved Qwen2-architecture model folder.")],
                    out: Annotated[Path, typer.Option(help="The .gguf file to write.")],
                    dtype: Annotated[str, typer.Option(help="f32 or f16.")] = "f16") -> None:
    """Write a model folder as one GGUF file for llama.cpp / llama-cpp-python / Ollama (weights, tokenizer,
    chat template)."""
    from .export.gguf_export import export_gguf

    info = export_gguf(model, out, dtype)
    typer.echo(f"gguf ({info['dtype']}): {info['tensors']} tensors, {info['vocab']} tokens, {info['bytes']:,} bytes "
               f"-> {out}")


@export_app.command("push")
def export_push(folder: Annotated[Path, typer.Argument(help="An exported folder (with README.md model card).")],
                repo_id: Annotated[str, typer.Option(help="Hub repo, e.g. you/R1-Distill-Qwen-1.5B-mine.")],
                private: Annotated[bool, typer.Option("--private/--public")] = True,
                dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be uploaded where.")] = False
                ) -> None:
    """Upload an exported folder to the Hugging Face Hub (token from HF_TOKEN or `hf auth login`)."""
    from .export.push import push

    res = push(folder, repo_id, private=private, dry_run=dry_run)
    verb = "would upload" if dry_run else "uploaded"
    typer.echo(f"{verb} {len(res['files'])} files ({res['bytes']:,} bytes) to "
               f"https://huggingface.co/{repo_id} ({'private' if private else 'public'})")
    for name, size in res["files"]:
        typer.echo(f"  {name}  {size:,}")
    if not dry_run:
        typer.echo(f"commit: {res['commit']}")


@app.command("run")
def run_cmd(recipe: RecipeArg, out: OutOpt = Path("runs/run"), set_: SetOpt = None, force: ForceOpt = False) -> None:
    """Run all stages in order (prompts, generate, filter, train, quantize, eval, export); complete stages are
    skipped, so a rerun after a crash continues where it stopped."""
    from .config import load_recipe
    from .pipeline import run_pipeline
    from .report import print_report

    report = run_pipeline(load_recipe(recipe, set_ or []), out, force=force)
    print_report(report)
    typer.echo(f"report: {out / 'report.json'}")


@app.command("demo")
def demo_cmd(out: OutOpt = Path("runs/demo"), set_: SetOpt = None, force: ForceOpt = False) -> None:
    """The whole pipeline on the bundled tiny teacher, on the CPU, offline (recipe 'tiny')."""
    run_cmd("tiny", out, set_, force)


@app.command("list")
def list_cmd() -> None:
    """List the catalog entries (teachers, students, data, eval suites, run recipes)."""
    from .catalog import KINDS, list_entries

    for kind in KINDS:
        typer.echo(f"{kind}: {', '.join(list_entries(kind)) or '-'}")


def main() -> None:
    """Entry point: user errors print one line and exit 2; no traceback walls (entry.run_reporting_errors)."""
    from .progress import quiet_library_loggers

    print_warnings_once()
    quiet_library_loggers()
    code = run_reporting_errors(app)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
