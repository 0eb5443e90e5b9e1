"""Sandbox throughput: N trivial programs run one after another vs through a pool of workers.

Why: the filter stage verifies many samples; this shows what one sandboxed run costs (namespaces + two interpreter
start-ups) and how much a small pool buys on this machine. Usage: python benchmarks/bench_sandbox.py [N] [WORKERS]
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distill.verify.sandbox import isolation_level, run_program  # noqa: E402

PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\n"


def _one(i: int) -> bool:
    r = run_program(PROGRAM, f"{i} 1\n")
    return r.status == "ok" and r.stdout.strip() == str(i + 1)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    print(f"isolation: {isolation_level()}  cpus: {os.cpu_count()}  programs: {n}")
    t0 = time.perf_counter()
    ok_seq = sum(_one(i) for i in range(n))
    seq = time.perf_counter() - t0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ok_par = sum(pool.map(_one, range(n)))
    par = time.perf_counter() - t0
    print(f"sequential : {n / seq:6.1f} programs/s  ({1000 * seq / n:.0f} ms each, {ok_seq}/{n} ok)")
    print(f"pool of {workers:<3}: {n / par:6.1f} programs/s  ({ok_par}/{n} ok)")
    print(f"speed-up   : {seq / par:.2f}x")


if __name__ == "__main__":
    main()
