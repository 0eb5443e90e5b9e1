"""Host memory of building the student in a non-main process of an FSDP launch: empty model against a full read.

Why: under FSDP with cpu_ram_efficient_loading (configs/accelerate/fsdp2.yaml, the 70B recipe) only the main
process needs the base's weights; accelerate sends every other process its shards in ``prepare``. transformers 5
reads the whole checkpoint in every process anyway (huggingface/transformers#43749), so a node of 8 GPUs held
8 copies of the base in host memory (8 x 141 GB for Llama-3.3-70B in bf16). distributed.receives_weights_from_main
makes those processes build an empty model (model.empty_model + allocate_unwritten) instead. The baseline here
is what they did before: the same ``build_student`` reading the checkpoint. Both run in this one process, one
after the other, each with the kernel's peak-RSS mark reset first; memory is that peak's rise over the build.

    python benchmarks/bench_fsdp_loading.py [--layers 12] [--hidden 1024]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_packed_mask import peak_rss_reset, proc_status_bytes  # noqa: E402

RECEIVING = {"WORLD_SIZE": "2", "RANK": "1", "ACCELERATE_USE_FSDP": "true", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}


def write_base(folder: Path, layers: int, hidden: int) -> int:
    """A Qwen2 base of ``layers`` x ``hidden`` with the bundled teacher's tokenizer, saved as Hub checkpoints are
    (bf16; the student loads float32 master weights from it); its size in bytes on disk."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(ROOT / "teachers" / "tiny-arith")
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=4,
                         max_position_embeddings=4096, tie_word_embeddings=False, eos_token_id=tok.eos_token_id)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def build(base: Path, env: dict[str, str]) -> tuple[float, int, int]:
    """Seconds, peak-RSS rise (bytes) and parameter count of one build_student of ``base`` under ``env``."""
    from distill.student.miniature import tiny_student
    from distill.student.model import build_student

    cfg = tiny_student().model_copy(update={"base": str(base), "init_config": None})
    saved = {k: os.environ.get(k) for k in RECEIVING}
    os.environ.update(env)
    try:
        gc.collect()
        peak_rss_reset()
        before = proc_status_bytes("VmRSS")
        start = time.perf_counter()
        model, _ = build_student(cfg, teacher_model=str(base))
        seconds = time.perf_counter() - start
        rise = proc_status_bytes("VmHWM") - before
        params = sum(p.numel() for p in model.parameters())
        del model
        gc.collect()
        return seconds, rise, params
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=1024)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-fsdp-loading-"))
    try:
        size = write_base(folder, args.layers, args.hidden)
        build(folder, {})  # warm-up: imports, page cache, allocator
        full_s, full_rss, params = build(folder, {})
        empty_s, empty_rss, _ = build(folder, RECEIVING)
        mib = 1 << 20
        print(f"base: {params / 1e6:.0f}M parameters, {size / mib:,.0f} MiB on disk (bf16), loaded as float32")
        print(f"full read (baseline)         : peak RSS +{full_rss / mib:,.0f} MiB, {full_s:.2f} s")
        print(f"receiving process (empty)    : peak RSS +{empty_rss / mib:,.0f} MiB, {empty_s:.2f} s")
        per_param = (full_rss - empty_rss) / params
        print(f"ratio: {full_rss / max(empty_rss, mib):.0f}x less host memory (the empty build's rise counted as "
              f"1 MiB at least), {full_s / empty_s:.1f}x faster; saved {per_param:.1f} bytes per parameter, "
              f"{per_param * 70.6e9 / 1e9:,.0f} GB per process for a 70.6B base (arithmetic)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
