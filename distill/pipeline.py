"""The whole pipeline as stage functions over one run folder. ``distill run`` calls them in order.

Run folder layout (every stage writes ``manifest.json`` last; a complete, matching manifest means "skip"):

    RUN/prompts/{train,heldout}/    Prompt records
    RUN/generations/                teacher samples (Generation records)
    RUN/filtered/{kept,rejected}/   verdicts
    RUN/student/init/               the untrained student (for the baseline eval)
    RUN/student/model/              the trained student, plus loss.png
    RUN/quantized/                  the quantized student
    RUN/eval/<label>/<benchmark>/   samples and results.json per model
    RUN/export/<name>/, <name>-<q>/ Hub-ready folders with model cards
    RUN/report.json, report.png     the summary
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .catalog import model_ref
from .config import ResolvedRecipe
from .data.prompts import load_prompts
from .errors import DistillError
from .manifest import Stage, read_json, write_json_atomic
from .progress import console
from .records import Sampling, ShardedJsonlStore, write_jsonl_atomic

STAGES = ("prompts", "generate", "filter", "train", "train_unfiltered", "quantize", "eval", "export")


PREVIOUS_COMMAND = {"prompts": "distill teacher generate", "generations": "distill teacher generate",
                    "generations-parts": "distill teacher generate --shard",
                    "filtered": "distill teacher filter", "student": "distill student train",
                    "quantized": "distill run", "eval": "distill eval"}


def need(folder: Path) -> None:
    """A stage reads only complete output of the stage before it; anything else is one clear error."""
    manifest = folder / "manifest.json"
    if not manifest.exists() or read_json(manifest).get("status") != "complete":
        state = "is incomplete" if folder.exists() else "not found"
        raise DistillError(f"input {state}: run `{PREVIOUS_COMMAND.get(folder.name, 'distill run')}` first",
                           where=str(folder))


def make_run_folder(run: Path) -> Path:
    """Create the run folder (``--out``) and check this process can write in it: one error naming ``--out`` when it
    is a file, sits under a file, or cannot be created or written (else a FileExistsError, NotADirectoryError or
    PermissionError from deep inside the first stage)."""
    where = f"--out {run}"
    if run.exists() and not run.is_dir():
        raise DistillError("is a file, not a folder: --out names the run folder (created if missing)", where=where)
    try:
        run.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=run)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        why = exc.strerror or exc.__class__.__name__
        blocker = next((p for p in run.parents if p.exists() and not p.is_dir()), None)
        detail = f" ({blocker} is a file)" if blocker is not None else ""
        raise DistillError(f"cannot create or write the run folder: {why}{detail}", where=where) from None
    return run


def teacher_model_path(recipe: ResolvedRecipe) -> str:
    """The teacher's model as its backend takes it: a local folder or a Hub id for the transformers and vLLM
    backends (``catalog.model_ref``), the served model's name as it is for an OpenAI-compatible endpoint. Why:
    served names are neither (Fireworks' ``accounts/fireworks/models/deepseek-r1``, Ollama's ``deepseek-r1:7b``)
    and were refused as a missing model folder before a request was sent."""
    if recipe.teacher.backend == "openai":
        return recipe.teacher.model
    return model_ref(recipe.teacher.model)


def stage_spec(name: str, recipe: ResolvedRecipe, run: Path, shard: tuple[int, int] | None = None) -> Stage | None:
    """The Stage (folder, fingerprint, config) that stage ``name`` writes for this recipe, or None when the recipe
    skips it. The stage functions and ``check_claims`` both take it from here, so they cannot disagree."""
    r = recipe
    if name == "prompts":
        return Stage("prompts", run / "prompts", r.fingerprint("data"), r.data.model_dump())
    if name == "generate":
        folder = run / "generations" if shard is None else run / "generations-parts" / f"{shard[0]}-of-{shard[1]}"
        return Stage("generate", folder, r.fingerprint("data", "teacher"), r.teacher.model_dump())
    if name == "filter":
        return Stage("filter", run / "filtered", r.fingerprint("data", "teacher", "filter"), r.filter.model_dump())
    if name == "train":
        return Stage("train", run / "student", r.fingerprint("data", "teacher", "filter", "student"),
                     r.student.model_dump())
    if name == "train_unfiltered":
        return Stage("train_unfiltered", run / "student-unfiltered", r.fingerprint("data", "teacher", "student"),
                     r.student.model_dump()) if r.compare_unfiltered else None
    if name == "quantize":
        method = r.export.quantize
        return Stage("quantize", run / "quantized", r.fingerprint("data", "teacher", "filter", "student", "export"),
                     {"method": method}) if method != "none" else None
    if name == "eval":
        return Stage("eval", run / "eval", r.fingerprint(), r.eval.model_dump())
    if name == "export":
        return Stage("export", run / "export", r.fingerprint(), r.export.model_dump())
    raise ValueError(f"unknown stage {name!r}")


def check_claims(recipe: ResolvedRecipe, run: Path, names: list[str]) -> None:
    """Refuse at once when a stage about to run finds its folder claimed by a different recipe (the refusal its
    ``begin`` would give), rather than after the stages before it have run: the eval stage's fingerprint covers
    the whole recipe, so a changed setting was refused only after minutes of generation and training. A stage
    complete for this recipe is reused, so it is let through here as the stage function would."""
    for name in names:
        st = stage_spec(name, recipe, run)
        if st is not None and not st.is_complete():
            st.check_claim()


def check_student_inputs(recipe: ResolvedRecipe) -> None:
    """What a student stage checks before the student is built (minutes for a 70B, its untrained copy written
    first): the GKD teacher it will load, and the trackers it will log to. The train stages and the
    multi-process training launcher call it."""
    from .student.gkd import check_teacher
    from .student.trackers import check_report_to

    s = recipe.student
    if recipe.teacher.backend == "openai" and not (s.tokenizer or s.base):
        raise DistillError(f"a student built from init_config takes its tokenizer from the teacher, but teacher "
                           f"'{recipe.teacher.name}' is served over HTTP ({recipe.teacher.model}: no local "
                           "tokenizer); set student.tokenizer to a local folder or Hub id", where="student.tokenizer")
    check_teacher(s, teacher_model_path(recipe))
    check_report_to(s.train.report_to)


def check_plain_student(recipe: ResolvedRecipe) -> None:
    """Refuse ``student.lora.merge: false`` where a stage loads the trained student as a plain model.

    Why: with merge off the train stage keeps only the LoRA adapter (RUN/student/adapter, for users who publish
    adapters) and reports itself done; quantize, eval and export then read RUN/student/model, which was never
    written, and failed on the missing folder after the teacher had generated and the student had trained."""
    lora = recipe.student.lora
    if lora.enabled and not lora.merge:
        raise DistillError("lora.merge is false, so the train stage keeps only the LoRA adapter (RUN/student/"
                           "adapter), and quantize, eval and export load the trained student as a plain model: set "
                           "student.lora.merge=true, or train the adapter alone with `distill student train`",
                           where="student.lora.merge")


def stage_prompts(recipe: ResolvedRecipe, run: Path, force: bool = False) -> dict[str, Any]:
    st = stage_spec("prompts", recipe, run)
    if st.is_complete() and not force:
        return st.reused()
    make_run_folder(run)
    st.begin(force)
    from .data.prompts import BadRows

    counts: dict[str, Any] = {}
    skipped: dict[str, list[str]] = {}
    for split in ("train", "heldout"):
        bad = BadRows(recipe.data.on_bad_row)
        prompts = load_prompts(recipe.data, split, bad=bad)
        write_jsonl_atomic(run / "prompts" / split / "shard-00000.jsonl", [p.to_dict() for p in prompts])
        counts[split] = len(prompts)
        if bad.where:
            counts[f"{split}_skipped"] = len(bad.where)
            skipped[split] = bad.where
            console.print(f"[yellow]{split}: skipped {len(bad.where)} bad rows[/yellow] (listed in "
                          f"{run / 'prompts' / 'manifest.json'})")
    return st.finish(counts=counts, skipped_rows=skipped)


def _prompts(run: Path, split: str):
    from .records import Prompt

    return [Prompt.from_dict(r) for r in ShardedJsonlStore(run / "prompts" / split)]


def stage_generate(recipe: ResolvedRecipe, run: Path, force: bool = False,
                   shard: tuple[int, int] | None = None) -> dict[str, Any]:
    """Sample the teacher on the train prompts. With ``shard=(i, n)`` only prompts of shard i go to
    ``RUN/generations-parts/i-of-n/`` (one replica of a data-parallel run); ``stage_merge`` joins the parts."""
    from .teacher.backends.factory import backend_stats, make_backend
    from .teacher.generate import generate_to_store
    from .teacher.shard import select_shard

    t = recipe.teacher
    st = stage_spec("generate", recipe, run, shard)
    if st.is_complete() and not force:
        return st.reused()
    need(run / "prompts")
    prompts = _prompts(run, "train")
    if shard is not None:
        prompts = select_shard(prompts, *shard)
    st.begin(force)
    backend = make_backend(t, teacher_model_path(recipe))
    sampling = Sampling(**t.sampling.model_dump())
    counts = generate_to_store(prompts, backend, sampling, st.folder, description="teacher")
    if counts["prompts_missing"]:
        raise DistillError(f"{counts['prompts_missing']} prompts failed ({backend_stats(backend)}); "
                           "rerun the same command to retry only those", where=str(st.folder))
    from .teacher.ledger import UsageLedger

    ledger = UsageLedger(st.folder)
    return st.finish(inputs={"prompts": str(run / "prompts" / "train"), "teacher": t.model, "shard": shard},
                     counts=counts | {"runs": ledger.runs()}, tokens=ledger.totals(),
                     tokens_this_run=backend_stats(backend))


def stage_merge(recipe: ResolvedRecipe, run: Path, n_shards: int, force: bool = False) -> dict[str, Any]:
    """Join the n complete shard outputs into ``RUN/generations`` (by id: rerunnable, never duplicating)."""
    from .teacher.shard import merge_stores

    st = stage_spec("generate", recipe, run)
    if st.is_complete() and not force:
        return st.reused()
    parts = [run / "generations-parts" / f"{i}-of-{n_shards}" for i in range(n_shards)]
    for part in parts:
        need(part)
    make_run_folder(run)
    st.begin(force)
    written = merge_stores(parts, st.folder)
    tokens: dict[str, float] = {}
    for part in parts:
        for k, v in read_json(part / "manifest.json").get("tokens", {}).items():
            if isinstance(v, (int, float)):
                tokens[k] = tokens.get(k, 0) + v
    total = ShardedJsonlStore(st.folder).count()
    return st.finish(inputs={"parts": [str(p) for p in parts]},
                     counts={"shards": n_shards, "samples_written": written, "samples_total": total}, tokens=tokens)


def stage_filter(recipe: ResolvedRecipe, run: Path, force: bool = False) -> dict[str, Any]:
    from .filter.stage import filter_store

    st = stage_spec("filter", recipe, run)
    if st.is_complete() and not force:
        return st.reused()
    need(run / "generations")
    st.begin(force)
    counts = filter_store(run / "generations", st.folder, recipe.filter)
    return st.finish(inputs={"generations": str(run / "generations")}, counts=counts)


def stage_train(recipe: ResolvedRecipe, run: Path, force: bool = False) -> dict[str, Any]:
    from .student.model import build_student, parameter_count, save_untrained
    from .student.train import claim_released_if_nothing_trained, read_kept, train_student

    s = recipe.student
    st = stage_spec("train", recipe, run)
    if st.is_complete() and not force:
        return st.reused()
    need(run / "filtered")
    check_student_inputs(recipe)
    kept = read_kept(run / "filtered" / "kept")  # checked before the student is built: minutes for a 70B
    st.begin(force)
    with claim_released_if_nothing_trained(st):
        model, tokenizer = build_student(s, teacher_model_path(recipe), seed=s.train.seed)
        save_untrained(model, tokenizer, st.folder / "init", s)
        metrics = train_student(model, tokenizer, s, kept, st.folder, sampling=recipe.teacher.sampling,
                                teacher_model=teacher_model_path(recipe))
    return st.finish(inputs={"kept": str(run / "filtered" / "kept")},
                     counts={"parameters": parameter_count(model), "examples": metrics["examples"]}, metrics=metrics)


def stage_train_unfiltered(recipe: ResolvedRecipe, run: Path, force: bool = False) -> dict[str, Any]:
    """The ablation: the same student, same settings, trained on every renderable trace (no correctness, format
    or dedup filtering), so the report shows what the filter buys."""
    from .student.model import build_student, save_untrained
    from .student.train import claim_released_if_nothing_trained, read_kept, train_student

    st = stage_spec("train_unfiltered", recipe, run)
    if st is None:  # not recipe.compare_unfiltered
        return {"skipped": True}
    s = recipe.student
    if st.is_complete() and not force:
        return st.reused()
    need(run / "generations")
    check_student_inputs(recipe)
    st.begin(force)
    data = st.folder / "traces"
    usable, skipped = [], 0
    for g in ShardedJsonlStore(run / "generations"):
        if all(isinstance(g.get(key), str) and g[key].strip() for key in ("reasoning", "answer")):
            usable.append(g)
        else:
            skipped += 1
    if not data.exists():
        # Written whole, then renamed into place: a rerun after a crash (in training, say) finds the traces there
        # and trains on them as they were. Appended in place, each rerun added every generation again, and the
        # resumed student trained on doubled data from a checkpoint made on the single copy.
        partial = st.folder / "traces.partial"
        shutil.rmtree(partial, ignore_errors=True)
        with ShardedJsonlStore(partial) as store:
            store.append(usable)
        partial.rename(data)
    kept = read_kept(data)
    with claim_released_if_nothing_trained(st):
        model, tokenizer = build_student(s, teacher_model_path(recipe), seed=s.train.seed)
        save_untrained(model, tokenizer, st.folder / "init", s)
        metrics = train_student(model, tokenizer, s, kept, st.folder, sampling=recipe.teacher.sampling,
                                teacher_model=teacher_model_path(recipe))  # GKD: the same teacher as the student's
    return st.finish(counts={"traces": len(usable), "unrenderable_skipped": skipped}, metrics=metrics)


def stage_quantize(recipe: ResolvedRecipe, run: Path, force: bool = False) -> dict[str, Any]:
    from .export.quantize import quantize

    method = recipe.export.quantize
    st = stage_spec("quantize", recipe, run)
    if st is None:  # method == "none"
        return {"skipped": True}
    if st.is_complete() and not force:
        return st.reused()
    need(run / "student")
    st.begin(force)
    info = quantize(run / "student" / "model", st.folder / "model", method)
    return st.finish(inputs={"model": str(run / "student" / "model")}, counts=info)


def eval_targets(recipe: ResolvedRecipe, run: Path) -> dict[str, str]:
    targets = {"teacher": teacher_model_path(recipe), "student_untrained": str(run / "student" / "init"),
               "student": str(run / "student" / "model")}
    if recipe.export.quantize != "none":
        targets["student_quantized"] = str(run / "quantized" / "model")
    if recipe.compare_unfiltered:
        targets["student_unfiltered"] = str(run / "student-unfiltered" / "model")
    return targets


def eval_backend(recipe: ResolvedRecipe, label: str) -> Any:
    """The backend that evaluates target ``label``: the teacher's own for a teacher served by vLLM or over HTTP
    (R1 does not load into transformers on one process, and an endpoint's model is no local folder), else None
    (evaluate loads the model with transformers, as it does the students)."""
    if label != "teacher" or recipe.teacher.backend == "transformers":
        return None
    from .teacher.backends.factory import make_backend

    return make_backend(recipe.teacher, teacher_model_path(recipe))


def stage_eval(recipe: ResolvedRecipe, run: Path, force: bool = False) -> dict[str, Any]:
    from .evaluate.run import evaluate

    st = stage_spec("eval", recipe, run)
    if st.is_complete() and not force:
        return st.reused()
    need(run / "student")
    if recipe.export.quantize != "none":
        need(run / "quantized")
    if recipe.compare_unfiltered:
        need(run / "student-unfiltered")
    st.begin(force)
    results: dict[str, dict[str, Any]] = {}
    for label, ref in eval_targets(recipe, run).items():
        for bench in recipe.eval.benchmarks:
            res = evaluate(ref, bench, st.folder / label / bench.name, name=label, backend=eval_backend(recipe, label),
                           workers=recipe.filter.workers)
            results.setdefault(label, {})[bench.name] = res
    return st.finish(results=results)


def stage_export(recipe: ResolvedRecipe, run: Path, force: bool = False) -> dict[str, Any]:
    from .export.card import build_export

    st = stage_spec("export", recipe, run)
    if st.is_complete() and not force:
        return st.reused()
    need(run / "eval")
    st.begin(force)
    results = read_json(run / "eval" / "manifest.json")["results"]
    kept = read_json(run / "filtered" / "manifest.json")["counts"]["kept"]
    repo_id = recipe.export.repo_id or f"your-username/{recipe.name}-{recipe.student.name}"
    common = dict(base_model=recipe.student.base, teacher=recipe.teacher.name, licence=recipe.student.licence,
                  datasets=[recipe.data.name], n_traces=kept,
                  data_text=f"{kept} traces from `{recipe.teacher.name}` on `{recipe.data.name}` "
                            f"(prompts: {recipe.data.description or recipe.data.kind}), kept by the filter stage.")
    folders = {}
    flat = {label: next(iter(r.values())) for label, r in results.items() if r}
    main_res = {k: v for k, v in flat.items() if k in ("teacher", "student")}
    folders["student"] = build_export(run / "student" / "model", st.folder / recipe.student.name,
                                      repo_id=repo_id, results=main_res, quantization=None, **common)
    if recipe.export.quantize != "none":
        q = recipe.export.quantize
        q_res = {k: v for k, v in flat.items() if k in ("student", "student_quantized")}
        folders["student_quantized"] = build_export(run / "quantized" / "model",
                                                    st.folder / f"{recipe.student.name}-{q}", repo_id=f"{repo_id}-{q}",
                                                    results=q_res, quantization=q, **common)
    return st.finish(folders={k: str(v) for k, v in folders.items()}, repo_id=repo_id)


STAGE_FUNCS: dict[str, Callable[..., dict[str, Any]]] = {
    "prompts": stage_prompts, "generate": stage_generate, "filter": stage_filter, "train": stage_train, "train_unfiltered": stage_train_unfiltered,
    "quantize": stage_quantize, "eval": stage_eval, "export": stage_export,
}


def run_pipeline(recipe: ResolvedRecipe, run: Path, *, force: bool = False,
                 only: list[str] | None = None) -> dict[str, Any]:
    """Run every stage in order; a stage whose output is complete for this recipe is skipped. A folder claimed by
    a different recipe is refused before the first stage runs (not with --force: each stage then wipes its
    folder)."""
    from .report import build_report

    make_run_folder(run)
    names = [name for name in STAGES if not only or name in only]
    if not force:
        check_claims(recipe, run, names)
    if any(name in names for name in ("quantize", "eval", "export")):
        check_plain_student(recipe)  # here, the stages' one caller: before the teacher generates and trains
    if any((st := stage_spec(name, recipe, run)) is not None and (force or not st.is_complete())
           for name in ("train", "train_unfiltered") if name in names):
        check_student_inputs(recipe)  # a tracker that cannot log, a GKD teacher or tokenizer missing: before the
        # teacher generates
    seconds: dict[str, float] = {}
    for name in names:
        start = time.time()
        manifest = STAGE_FUNCS[name](recipe, run, force=force)
        took = time.time() - start
        if manifest.get("skipped"):
            continue
        reused = manifest.get("reused", False)
        console.print(f"[bold]{name}[/bold]: {'already complete, skipped' if reused else f'done in {took:.1f}s'}")
        seconds[name] = round(manifest.get("seconds", took) if reused else took, 2)
    if only:
        return {"stages": seconds}
    report = build_report(recipe, run, seconds)
    write_json_atomic(run / "report.json", report)
    return report


