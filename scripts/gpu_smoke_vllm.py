"""Smoke test of the vLLM teacher backend on a GPU node (not part of the CPU test suite).

    pip install -e '.[gpu]'
    python scripts/gpu_smoke_vllm.py --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --prompts 64 --n 4

Runs the real generate stage code (store, resume, records) through VLLMBackend on tiny-arith prompts, then prints
samples/s, output tokens/s, the share of samples that stopped, and one sample, and exits non-zero if nothing was
generated or no sample closed its think block.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from distill.config import VLLMConfig
from distill.records import Sampling, ShardedJsonlStore
from distill.tasks.arithmetic import make_problems
from distill.teacher.backends.vllm_backend import VLLMBackend
from distill.teacher.generate import generate_to_store


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=2048)
    ap.add_argument("--tp", type=int, default=1)
    args = ap.parse_args()

    backend = VLLMBackend(VLLMConfig(tensor_parallel_size=args.tp, max_model_len=args.max_new_tokens + 512),
                          args.model)
    prompts = make_problems("heldout", args.prompts)
    sampling = Sampling(temperature=0.6, top_p=0.95, max_new_tokens=args.max_new_tokens, n=args.n)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        counts = generate_to_store(prompts, backend, sampling, tmp)
        seconds = time.time() - start
        samples = list(ShardedJsonlStore(tmp))
    tokens = sum(s["completion_tokens"] for s in samples)
    stopped = sum(s["finish_reason"] == "stop" for s in samples)
    closed = sum(s["reasoning"] is not None for s in samples)
    print(f"{counts['samples_total']} samples in {seconds:.1f}s: {len(samples) / seconds:.1f} samples/s, "
          f"{tokens / seconds:,.0f} output tok/s, stopped {stopped}/{len(samples)}, think closed {closed}")
    print(samples[0]["completion"][:600] if samples else "no samples")
    return 0 if samples and closed else 1


if __name__ == "__main__":
    raise SystemExit(main())
