"""Check that the bundled tiny teacher is distillable: a much smaller student, trained from scratch for a few CPU
minutes on the teacher's *correct* samples, reaches at least half the teacher's held-out pass@1.

Why: the pipeline's end-to-end demo (generate -> filter -> SFT -> evaluate) is only meaningful if distillation
visibly works on this task. This script runs a miniature of that pipeline with plain torch so that the figures
(student config, steps, lr, batch size, time) can be copied into the real SFT stage:

1. sample the teacher once per train-split problem at T=0.6 / top_p=0.95 (the R1 recommendation);
2. keep the samples whose last ``\\boxed{}`` after ``</think>`` equals the gold answer and that stopped on EOS;
3. train a randomly initialised Qwen2 student (same tokenizer) on those traces, completion-only loss, under a
   wall-clock limit;
4. score teacher, untrained student and trained student on the same held-out problems with the same sampling.

Usage::

    python teachers/check_student_feasibility.py [--teacher teachers/tiny-arith] [--report out.json]

Exits 1 when the trained student's pass@1 is below half the teacher's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_tiny_teacher as B  # noqa: E402

from distill.tasks import arithmetic  # noqa: E402

# The student the real SFT stage should copy: ~7x fewer parameters than the teacher, head_dim 32.
STUDENT_CONFIG = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2)
STUDENT_TRAIN = dict(steps=1500, batch_size=32, lr=3e-3, warmup=100, weight_decay=0.1)
TIME_LIMIT_S = None  # the budget is the step count (deterministic); --time-limit adds a wall-clock cap
N_SAMPLE = 1200      # train problems sampled from the teacher
MAX_TRACES = 1000    # correct traces kept for SFT
SAMPLE_SEED = 7      # a different draw of train problems than the teacher's own training set
STUDENT_SEED = 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", default=str(B.ROOT / "teachers" / "tiny-arith"))
    ap.add_argument("--n-eval", type=int, default=B.N_EVAL)
    ap.add_argument("--n-sample", type=int, default=N_SAMPLE)
    ap.add_argument("--max-traces", type=int, default=MAX_TRACES)
    ap.add_argument("--steps", type=int, default=STUDENT_TRAIN["steps"])
    ap.add_argument("--time-limit", type=float, default=TIME_LIMIT_S,
                    help="also stop after this many seconds of training (off by default: wall time is noisy)")
    ap.add_argument("--report", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(B.NUM_THREADS)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher).eval()
    info = json.loads((Path(args.teacher) / "build_info.json").read_text())
    heldout = arithmetic.make_problems("heldout", args.n_eval, seed=info["seed"])
    report: dict = {"sampling": B.SAMPLING}

    t0 = time.time()
    report["teacher_heldout"] = B.score(heldout, B.sample(teacher, tokenizer, [p.problem for p in heldout],
                                                          seed=info["seed"]))
    print(f"teacher held-out: {report['teacher_heldout']} ({time.time() - t0:.0f}s)")

    # 1-2: sample the teacher on train problems, keep correct traces that stopped on EOS.
    t0 = time.time()
    train_problems = arithmetic.make_problems("train", args.n_sample, seed=SAMPLE_SEED)
    samples = B.sample(teacher, tokenizer, [p.problem for p in train_problems], seed=SAMPLE_SEED)
    report["teacher_train_samples"] = B.score(train_problems, samples)
    kept = []
    for p, s in zip(train_problems, samples):
        if s["correct"] and s["stopped"]:
            reasoning, answer = s["completion"].split(B.THINK_CLOSE, 1)
            kept.append((p.problem, reasoning, answer))
    kept = kept[:args.max_traces]
    report["traces_kept"] = len(kept)
    print(f"teacher on {len(train_problems)} train problems: {report['teacher_train_samples']}, "
          f"kept {len(kept)} correct traces ({time.time() - t0:.0f}s)")

    # 3: random-init student, untrained baseline, then SFT under the time limit.
    student = B.make_model(tokenizer, STUDENT_SEED, **STUDENT_CONFIG).eval()
    report["student_config"] = STUDENT_CONFIG
    report["student_params"] = B.n_params(student)
    report["teacher_params"] = B.n_params(teacher)
    report["student_untrained_heldout"] = B.score(
        heldout, B.sample(student, tokenizer, [p.problem for p in heldout], seed=info["seed"]))
    print(f"untrained student ({report['student_params']:,} params): {report['student_untrained_heldout']}")

    pairs = B.encode_pairs(tokenizer, kept)
    hp = STUDENT_TRAIN | {"steps": args.steps}
    stats = B.train(student, pairs, seed=STUDENT_SEED, pad_id=tokenizer.pad_token_id,
                    time_limit_s=args.time_limit, **hp)
    report["student_train"] = hp | stats | {"time_limit_s": args.time_limit, "threads": B.NUM_THREADS}

    # 4: the trained student on the same held-out problems and sampling.
    report["student_trained_heldout"] = B.score(
        heldout, B.sample(student, tokenizer, [p.problem for p in heldout], seed=info["seed"]))
    ratio = report["student_trained_heldout"]["pass@1"] / max(report["teacher_heldout"]["pass@1"], 1e-9)
    report["student_over_teacher"] = round(ratio, 3)
    report["ok"] = ratio >= 0.5
    print(json.dumps(report, indent=2))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
