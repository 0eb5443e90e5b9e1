"""Quantization with bitsandbytes: int8 (LLM.int8) or NF4 weights, saved as safetensors that reload quantized.

bitsandbytes runs on the CPU as well as on GPUs, so the demo's quantized student is a real one, evaluated like the
others. FP8 / W4A16 (llm-compressor) and GGUF slot in here as further methods.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import DistillError

METHODS = ("bnb-int8", "bnb-nf4")


def quantize(model_dir: str | Path, out_dir: str | Path, method: str = "bnb-int8") -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if method not in METHODS:
        raise DistillError(f"unknown quantization method '{method}' (known: {', '.join(METHODS)})")
    if not (model_dir / "config.json").exists():
        raise DistillError("not a model folder (no config.json)", where=str(model_dir))
    if method == "bnb-int8":
        qcfg = BitsAndBytesConfig(load_in_8bit=True)
    else:
        qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=compute_dtype(model_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=qcfg,
                                                     device_map="cuda" if torch.cuda.is_available() else "cpu")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(tmp)
    if (model_dir / "generation_config.json").exists():
        shutil.copy(model_dir / "generation_config.json", tmp / "generation_config.json")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return {"method": method, "size_bytes": folder_size(out_dir), "source_size_bytes": folder_size(model_dir)}


def compute_dtype(model_dir: Path) -> torch.dtype:
    """The dtype NF4 weights are dequantized to for each matmul: the one the model was saved in (bf16 for a real
    student, float32 for the CPU demo's).

    Why: the choice is written into the published config.json and every later load uses it; a fixed float32
    made a bf16 student's NF4 export run its matmuls in float32 on the GPU, at twice the memory traffic."""
    import json

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    saved = config.get("dtype") or config.get("torch_dtype")
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(saved, torch.float32)


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
