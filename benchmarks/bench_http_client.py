"""Does the HTTP teacher client keep its concurrency limit in flight, and what CPU does it spend per request?

Against the loopback echo server (``distill.teacher.serve --latency-ms``, a separate process so its CPU is not
counted) every request takes the server's fixed latency, so a client holding C requests in flight achieves C/latency
requests/s at best. The ratio achieved/ideal shows client-side overhead (goal: >= 0.9 at 64 and 1,000 in flight);
client CPU per request is ``time.process_time()`` of this process divided by the requests served. The whole backend
path is measured: request building, aiohttp, JSON parsing, Generation records, the thread hand-off.

    .venv/bin/python benchmarks/bench_http_client.py [--latency-ms 1000] [--concurrency 64 1000] [--rounds 20]
                                                     [--floor]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402,F401  (imported here: a one-off ~0.2 s of CPU is not a per-request cost)

from distill.records import Prompt, Sampling  # noqa: E402
from distill.teacher.backends.openai_http import OpenAIChatBackend, Pricing  # noqa: E402


def start_server(latency_ms: float, jitter: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "distill.teacher.serve", "--latency-ms", str(latency_ms),
                             "--latency-jitter", str(jitter),
                             "--port", "0", "--host", "127.0.0.1"], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, line.split(" on ")[1].strip()


def server_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        parts = fh.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def run_one(url: str, concurrency: int, rounds: int, latency_s: float) -> dict:
    be = OpenAIChatBackend(url, "echo", api_key_env=None, max_in_flight=concurrency, timeout_s=60,
                           pricing=Pricing.free(), name="bench")
    total = concurrency * rounds
    prompts = [Prompt(id=f"q{i}", problem=f"What is {i} + 1?", answer=str(i + 1)) for i in range(total)]
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:  # how many requests are really open, every 20 ms
        while not stop.wait(0.02):
            samples.append(be.stats.in_flight)

    sampler = threading.Thread(target=sample, daemon=True)
    done_at: list[float] = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    sampler.start()
    for batch in be.generate(prompts, Sampling(n=1, max_new_tokens=64)):
        done_at.append(time.perf_counter() - t0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    stop.set()
    sampler.join()
    assert len(done_at) == total and not be.stats.failed, (len(done_at), be.stats.to_dict())
    steady = samples[len(samples) // 10: -max(len(samples) // 10, 1)] or samples
    # Sustained rate: completions after the first round is back (every connection open, the ramp-up over) and
    # before the last round went out (from then on fewer than `concurrency` requests remain to send).
    lo, hi = done_at[concurrency - 1], wall - latency_s
    window = [t for t in done_at if lo < t <= hi]
    sustained = len(window) / (hi - lo) if hi - lo > latency_s else float("nan")
    return {"in_flight": concurrency, "requests": total, "wall_s": wall, "rps": total / wall,
            "ideal_rps": concurrency / latency_s, "ratio": (total / wall) / (concurrency / latency_s),
            "sustained_ratio": sustained / (concurrency / latency_s),
            "mean_open": sum(steady) / max(len(steady), 1), "cpu_us_per_req": cpu / total * 1e6,
            "errors": sum(be.stats.errors.values())}


def run_floor(url: str, concurrency: int, rounds: int, latency_s: float) -> dict:
    """The same load with bare aiohttp (one session, a semaphore, json.loads): the library's own floor, to tell
    the backend's overhead from aiohttp's and the machine's."""
    import asyncio
    import json

    total = concurrency * rounds
    body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "What is 1 + 1?"}], "n": 1,
                       "max_tokens": 64}).encode()

    async def go() -> None:
        sem = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency, ssl=False)) as s:
            async def one() -> None:
                async with sem:
                    async with s.post(url + "/chat/completions", data=body) as r:
                        json.loads(await r.read())
            await asyncio.gather(*[one() for _ in range(total)])

    cpu0, t0 = time.process_time(), time.perf_counter()
    asyncio.run(go())
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"in_flight": concurrency, "requests": total, "wall_s": wall, "rps": total / wall,
            "ideal_rps": concurrency / latency_s, "ratio": (total / wall) / (concurrency / latency_s),
            "sustained_ratio": float("nan"), "mean_open": float("nan"), "cpu_us_per_req": cpu / total * 1e6,
            "errors": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency-ms", type=float, default=1000.0,
                    help="server latency per request; R1 requests take minutes, 1 s is already a stress test")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64, 1000])
    ap.add_argument("--rounds", type=int, default=20, help="requests per run = concurrency * rounds")
    ap.add_argument("--jitter", type=float, default=0.0,
                    help="server latency uniform in latency*(1 +- J), same mean: breaks the lock-step waves in which"
                         " every response arrives at once (0 = strict fixed latency)")
    ap.add_argument("--floor", action="store_true", help="also run bare aiohttp on the same load, for reference")
    a = ap.parse_args()
    load_before = os.getloadavg()[0]  # other work on the machine competes for the same cores
    proc, url = start_server(a.latency_ms, a.jitter)
    try:
        run_one(url, 16, 2, a.latency_ms / 1000)  # warm-up: first-call costs (loop, session, caches) are not per request
        rows = []
        for c in a.concurrency:
            s_cpu0 = server_cpu_s(proc.pid)
            row = run_one(url, c, a.rounds, a.latency_ms / 1000)
            row["server_cpu_us_per_req"] = (server_cpu_s(proc.pid) - s_cpu0) / row["requests"] * 1e6
            row["client"] = "backend"
            rows.append(row)
            if a.floor:
                s_cpu0 = server_cpu_s(proc.pid)
                row = run_floor(url, c, a.rounds, a.latency_ms / 1000)
                row["server_cpu_us_per_req"] = (server_cpu_s(proc.pid) - s_cpu0) / row["requests"] * 1e6
                row["client"] = "bare aiohttp"
                rows.append(row)
    finally:
        proc.terminate()
        proc.wait(10)
    jit = f" +- {a.jitter * 100:g}% (uniform, same mean)" if a.jitter else " (fixed)"
    print(f"\nHTTP client vs loopback echo server, latency {a.latency_ms:g} ms{jit}, {os.cpu_count()} CPUs, "
          f"1-min load average at start: {load_before:.2f}")
    head = (f"{'client':>12} {'in flight':>9} {'requests':>8} {'wall s':>7} {'req/s':>8} {'ideal':>8} {'ratio':>6} "
            f"{'sustained':>9} {'mean open':>9} {'client CPU/req':>14} {'client ceiling':>14} {'server CPU/req':>14} {'errors':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['client']:>12} {r['in_flight']:>9} {r['requests']:>8} {r['wall_s']:>7.2f} {r['rps']:>8.0f} {r['ideal_rps']:>8.0f} "
              f"{r['ratio']:>6.3f} {r['sustained_ratio']:>9.3f} {r['mean_open']:>9.0f} {r['cpu_us_per_req']:>11.0f} us "
              f"{1e6 / r['cpu_us_per_req']:>8.0f} req/s "
              f"{r['server_cpu_us_per_req']:>11.0f} us {r['errors']:>6}")
    ok = all(r["sustained_ratio"] >= 0.9 for r in rows if r["client"] == "backend")
    print("\nratio = all requests / wall time over the ideal; sustained = the same between the first round's return"
          "\n(connections open) and the last round's start (fewer left than the limit), i.e. a long run's rate.")
    print("client ceiling = requests/s the client could sustain on one whole core at its CPU cost per request;"
          "\nwhen ideal exceeds it (or the two processes share too few cores), the ratio is CPU-bound, not"
          " concurrency-bound.")
    print(f"goal sustained ratio >= 0.9 at every concurrency: {'MET' if ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
