"""GKD (logit distillation, on-policy) vs SFT alone at equal steps, on the CPU miniature: held-out pass@1.

Why: ``distill_method: gkd`` costs more per step (teacher forward, on-policy generation); this shows what it buys
where it applies (teacher and student share a tokenizer). Both runs start from the same demo student
(students/tiny-arith-student.yaml's architecture), by default after a short SFT warm start (GKD refines an SFT'd
student in its paper; from scratch its on-policy samples are noise), and see the same tiny-arith traces for the
same number of optimizer steps; GKD also sees the bundled teacher's full distributions (and, on a fraction
``lmbda`` of its steps, its own samples scored by the teacher). Each student is then evaluated like the pipeline's
eval stage (distill.evaluate.run: R1 sampling at T=0.6/top_p 0.95, k samples per held-out problem, math-verify).

    python benchmarks/bench_gkd_vs_sft.py [--teacher teachers/tiny-arith] [--warmup-steps 150] [--steps 150]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def student_config(method: str, teacher: str, a: argparse.Namespace, steps: int, base: str | None = None):
    """The demo student (students/tiny-arith-student.yaml), from scratch or from ``base`` (the SFT warm start)."""
    from distill.config import load_entry

    demo = load_entry("student", "tiny-arith-student")
    train = {**demo.train.model_dump(), "max_steps": steps, "per_device_train_batch_size": a.batch,
             "logging_steps": 10, "report_to": "none", "save_steps": 100000, "threads": a.threads,
             "distill_method": method,
             "gkd": {"teacher": teacher, "lmbda": a.lmbda, "beta": a.beta, "max_new_tokens": 112}}
    update = {"name": f"bench-{method}", "train": type(demo.train)(**train)}
    if base:
        update.update(base=base, init_config=None)
    return demo.model_copy(update=update)


def train(method: str, teacher: str, kept: Path, out: Path, a: argparse.Namespace, steps: int,
          base: str | None = None) -> dict:
    from distill.student.model import build_student
    from distill.student.train import train_student

    cfg = student_config(method, teacher, a, steps, base)
    model, tok = build_student(cfg, teacher, seed=a.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train_student(model, tok, cfg, kept, out)


def train_and_eval(method: str, teacher: str, kept: Path, work: Path, a: argparse.Namespace,
                   base: str | None) -> dict:
    from distill.config import BenchmarkConfig, DataConfig, SamplingConfig
    from distill.evaluate.run import evaluate

    m = train(method, teacher, kept, work / method, a, a.steps, base)
    data = DataConfig(name="tiny-arith", heldout_size=a.problems)
    bench = BenchmarkConfig(name="tiny-arith-heldout", data=data, split="heldout", limit=a.problems, k=a.k,
                            sampling=SamplingConfig(temperature=0.6, top_p=0.95, max_new_tokens=160, n=a.k,
                                                    seed=1234), batch_size=50)
    t0 = time.time()
    res = evaluate(str(work / method / "model"), bench, work / method / "eval", name=method)
    return {"steps": m["steps"], "train_seconds": m["seconds"], "final_loss": m["final_loss"],
            "pass@1": res["pass@1"], "stopped_fraction": res["stopped_fraction"],
            "eval_seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=str(ROOT / "teachers" / "tiny-arith"))
    p.add_argument("--warmup-steps", type=int, default=150, help="SFT steps both runs start from (0: from scratch;"
                   " GKD, like its paper, is meant to refine an SFT'd student)")
    p.add_argument("--steps", type=int, default=150, help="steps of SFT vs GKD after the warm start")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--traces", type=int, default=1024, help="training traces (tiny-arith reference solutions)")
    p.add_argument("--problems", type=int, default=100, help="held-out problems")
    p.add_argument("--k", type=int, default=2, help="samples per problem")
    p.add_argument("--lmbda", type=float, default=0.5)
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not (Path(a.teacher) / "config.json").exists():
        raise SystemExit(f"no teacher at {a.teacher}: build it with teachers/build_tiny_teacher.py or pass --teacher")
    from distill.student.miniature import write_kept

    work = Path(tempfile.mkdtemp(prefix="bench-gkd-"))
    try:
        kept = write_kept(work / "kept", a.traces)
        print(f"load: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; teacher {a.teacher}; {a.steps} steps x "
              f"batch {a.batch}; GKD lmbda {a.lmbda} beta {a.beta}; eval {a.problems} held-out problems x k={a.k}")
        base = None
        if a.warmup_steps:
            warm = train("sft", a.teacher, kept, work / "warm", a, a.warmup_steps)
            base = str(work / "warm" / "model")
            print(f"warm start: {a.warmup_steps} SFT steps, loss {warm['final_loss']:.4f}, {warm['seconds']} s")
        results = {}
        for method in ("sft", "gkd"):
            results[method] = r = train_and_eval(method, a.teacher, kept, work, a, base)
            print(f"{method}: pass@1 {r['pass@1']:.1f}%  stopped {r['stopped_fraction']:.2f}  final loss "
                  f"{r['final_loss']:.4f}  train {r['train_seconds']} s for {r['steps']} steps  "
                  f"eval {r['eval_seconds']} s")
        base = results["sft"]["pass@1"]
        ratio = f"{results['gkd']['pass@1'] / base:.2f}x" if base else "n/a (SFT pass@1 is 0)"
        print(f"GKD / SFT pass@1: {ratio}   train time ratio: "
              f"{results['gkd']['train_seconds'] / max(results['sft']['train_seconds'], 1e-9):.2f}x")
        print(json.dumps(results))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
