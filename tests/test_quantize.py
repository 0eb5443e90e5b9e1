"""bitsandbytes quantization of a trained student: NF4 computes in the dtype the model was saved in."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import TINY_TEACHER


@pytest.mark.parametrize("saved,expected", [("float32", "float32"), ("bfloat16", "bfloat16")])
def test_nf4_export_computes_in_the_models_own_dtype(tmp_path, saved, expected):
    """Before, every NF4 export wrote bnb_4bit_compute_dtype float32 into its config.json, so a bf16 student's
    published NF4 checkpoint dequantized to float32 for every matmul on the GPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.export.quantize import quantize

    source = tmp_path / "student"
    AutoModelForCausalLM.from_pretrained(TINY_TEACHER, dtype=getattr(torch, saved)).save_pretrained(source)
    AutoTokenizer.from_pretrained(TINY_TEACHER).save_pretrained(source)
    info = quantize(source, tmp_path / "nf4", "bnb-nf4")
    config = json.loads((tmp_path / "nf4" / "config.json").read_text())
    q = config["quantization_config"]
    assert q["quant_method"] == "bitsandbytes" and q["load_in_4bit"] and q["bnb_4bit_quant_type"] == "nf4"
    assert q["bnb_4bit_compute_dtype"] == expected
    assert info["size_bytes"] < info["source_size_bytes"]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "nf4")  # reloads quantized, and runs
    ids = torch.tensor([[0, 2, 21, 15]])
    assert reloaded(ids).logits.shape[-1] == reloaded.config.vocab_size
