"""Filter-stage figures: math verification throughput (guarded pool vs one process) and peak memory (1x vs 10x).

Why: the filter must use every core (math-verify is CPU-bound, ~1-5 ms an answer) and stream in bounded memory
(millions of traces). Goals: pool on 2 cores >= 1.8x one process; peak RSS at 10x the traces within 10% of 1x.
The traces are synthetic but shaped like R1 output (multi-paragraph reasoning, boxed answers in many forms, 4
samples per prompt, some wrong). The machine may be shared: the load average and CPU seconds are printed with
the wall-clock figures, since a loaded machine cuts the wall-clock speed-up whatever the pool does.

Usage: python benchmarks/bench_filter.py [N_MATH=2000] [N_MEMORY=2000] [WORKERS=2]
       python benchmarks/bench_filter.py --math-only [N_MATH=2000] [WORKERS=2]
"""

from __future__ import annotations

import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from distill.records import Prompt, Sampling, ShardedJsonlStore  # noqa: E402
from distill.teacher.backends.base import make_generation  # noqa: E402
from distill.verify.math import check_math_batch  # noqa: E402

WORDS = ("the of and to we so then let check value sum term equation root factor side angle area triangle "
         "circle number prime digit count case both each since because therefore now again wait verify compute "
         "substitute simplify expand integer ratio probability expected").split()


def answer_pair(rng: random.Random) -> tuple[str, str, str]:
    """(gold, right answer text, wrong answer text) in one of the forms R1 writes."""
    a, b = rng.randint(2, 99), rng.randint(2, 9)
    forms = [
        (str(a * b), f"\\boxed{{{a * b}}}", f"\\boxed{{{a * b + 1}}}"),
        (f"\\frac{{{a}}}{{{a + b}}}", f"\\boxed{{\\dfrac{{{2 * a}}}{{{2 * (a + b)}}}}}",
         f"\\boxed{{\\frac{{{a + 1}}}{{{a + b}}}}}"),
        (f"{b}\\sqrt{{{a}}}", f"\\boxed{{\\sqrt{{{a * b * b}}}}}", f"\\boxed{{{b + 1}\\sqrt{{{a}}}}}"),
        (f"\\frac{{\\pi}}{{{b}}}", f"\\boxed{{\\pi/{b}}}", f"\\boxed{{\\pi/{b + 1}}}"),
        (f"({b}, {a}]", f"\\boxed{{({b},{a}]}}", f"\\boxed{{[{b},{a}]}}"),
        (f"x^2+{2 * b}x+{b * b}", f"\\boxed{{(x+{b})^2}}", f"\\boxed{{(x+{b + 1})^2}}"),
        (f"{a / 4:.2f}", f"\\boxed{{\\frac{{{a}}}{{4}}}}", f"\\boxed{{{a / 4 + 1:.2f}}}"),
    ]
    return rng.choice(forms)


def reasoning(rng: random.Random, paragraphs: int) -> str:
    out = []
    for _ in range(paragraphs):
        sents = []
        for _ in range(rng.randint(3, 6)):
            x, y = rng.randint(1, 999), rng.randint(1, 999)
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16)))
            sents.append(f"{words.capitalize()}: {x} + {y} = {x + y}.")
        out.append(" ".join(sents))
    return "\n\n".join(out)


def make_store(path: Path, n_traces: int, seed: int = 0, per_prompt: int = 4) -> list[tuple[str, str]]:
    """Write ``n_traces`` generations (``per_prompt`` per prompt, ~30% wrong) and return their (gold, answer)."""
    rng = random.Random(seed)
    pairs = []
    with ShardedJsonlStore(path, records_per_shard=5000) as store:
        for p in range(n_traces // per_prompt):
            gold, right, wrong = answer_pair(rng)
            problem = (f"Problem {seed}-{p}: " + " ".join(rng.choice(WORDS) for _ in range(30))
                       + f" Find the value. ({rng.random():.6f})")
            prompt = Prompt(id=f"bench-{seed}-{p}", problem=problem, answer=gold, source=f"src{p % 3}")
            batch = []
            for i in range(per_prompt):
                answer = f"Therefore the final answer is ${right if rng.random() < 0.7 else wrong}$."
                think = reasoning(rng, rng.randint(4, 10))
                tokens = len(think) // 4 + 20
                batch.append(make_generation(prompt, i, f"{think}\n</think>\n\n{answer}", "stop", prompt_tokens=60,
                                             completion_tokens=tokens, teacher="bench",
                                             sampling=Sampling()).to_dict())
                pairs.append((gold, answer))
            store.append(batch)
    return pairs


def cpu() -> tuple[float, float]:
    t = os.times()
    return t.user + t.system, t.children_user + t.children_system


def bench_math(pairs: list[tuple[str, str]], workers: int, reps: int = 3) -> None:
    """One process vs the guarded pool on the same answers, ``reps`` times alternating (the machine's noise hits
    both alike); prints each run and the speed-up of the medians and of the bests."""
    print(f"== math verification: {len(pairs)} answers, {workers} workers vs one process, {reps} alternating runs")
    check_math_batch(pairs[:50], inline=True)  # warm math-verify's lazy imports in this process
    load0 = os.getloadavg()[0]
    single_t, pool_t, single_cpu, pool_cpu = [], [], [], []
    for rep in range(reps):
        c0 = cpu()
        t0 = time.perf_counter()
        single = check_math_batch(pairs, inline=True)
        single_t.append(time.perf_counter() - t0)
        c1 = cpu()
        t0 = time.perf_counter()
        pooled = check_math_batch(pairs, workers=workers)
        pool_t.append(time.perf_counter() - t0)
        c2 = cpu()
        assert [v.correct for v in single] == [v.correct for v in pooled]
        single_cpu.append(c1[0] - c0[0])
        pool_cpu.append((c2[0] - c1[0], c2[1] - c1[1]))
        print(f"run {rep + 1}: one process {len(pairs) / single_t[-1]:7.1f} answers/s ({single_t[-1]:.2f} s, "
              f"{single_cpu[-1]:.2f} s CPU) | pool of {workers} {len(pairs) / pool_t[-1]:7.1f} answers/s "
              f"({pool_t[-1]:.2f} s, {pool_cpu[-1][0]:.2f} s CPU parent + {pool_cpu[-1][1]:.2f} s workers) "
              f"-> {single_t[-1] / pool_t[-1]:.2f}x", flush=True)
    med = statistics.median
    n = len(pairs)
    print(f"speed-up    : {med(single_t) / med(pool_t):.2f}x median, {min(single_t) / min(pool_t):.2f}x best "
          f"(goal >= 1.8x on 2 idle cores)")
    print(f"CPU/answer  : one process {1000 * med(single_cpu) / n:.2f} ms; pool {1000 * med(c[1] for c in pool_cpu) / n:.2f}"
          f" ms in workers + {1000 * med(c[0] for c in pool_cpu) / n:.2f} ms in the parent (the workers' CPU per "
          f"answer rising above one process's means the two cores slow each other: shared caches, a busy host)")
    print(f"load average: {load0:.2f} before, {os.getloadavg()[0]:.2f} after, on {os.cpu_count()} CPUs; "
          f"correct {sum(v.correct for v in pooled)}/{len(pooled)}")


CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
from distill.config import FilterConfig
from distill.filter.stage import filter_store
t0 = time.perf_counter()
counts = filter_store(sys.argv[1], sys.argv[2], FilterConfig(workers=int(sys.argv[4])))
took = time.perf_counter() - t0
print(json.dumps({"self_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "workers_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "seconds": took, "generated": counts["generated"], "kept": counts["kept"]}))
"""


def run_filter(gens: Path, out: Path, workers: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(gens), str(out), str(ROOT), str(workers)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_memory(n: int, workers: int, tmp: Path) -> None:
    print(f"== peak memory: filter_store on {n} vs {10 * n} traces (subprocesses, ru_maxrss)")
    results = {}
    for scale in (1, 10):
        gens = tmp / f"gens-{scale}x"
        make_store(gens, n * scale, seed=scale)
        size = sum(p.stat().st_size for p in gens.iterdir()) / 1e6
        r = run_filter(gens, tmp / f"out-{scale}x", workers)
        results[scale] = r
        print(f"{scale:>2}x: {r['generated']:6d} traces ({size:6.1f} MB)  parent peak {r['self_kb'] / 1024:7.1f} MiB"
              f"  worker peak {r['workers_kb'] / 1024:7.1f} MiB  {r['generated'] / r['seconds']:6.1f} traces/s"
              f"  kept {r['kept']}")
    ratio = results[10]["self_kb"] / results[1]["self_kb"]
    wratio = results[10]["workers_kb"] / results[1]["workers_kb"]
    print(f"ratio 10x/1x: parent {ratio:.3f}, workers {wratio:.3f}  (goal <= 1.10)")


def main() -> None:
    if "--math-only" in sys.argv:
        sys.argv.remove("--math-only")
        n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
        with tempfile.TemporaryDirectory(prefix="bench-filter-") as tmp:
            bench_math(make_store(Path(tmp) / "math", n, seed=99), int(sys.argv[2]) if len(sys.argv) > 2 else 2)
        return
    n_math = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    n_mem = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    with tempfile.TemporaryDirectory(prefix="bench-filter-") as tmp:
        tmp = Path(tmp)
        pairs = make_store(tmp / "math", n_math, seed=99)
        bench_math(pairs, workers)
        bench_memory(n_mem, workers, tmp)
    print(f"peak RSS of this driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
