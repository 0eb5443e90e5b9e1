"""The HTTP teacher backend against a server nobody here wrote: llama-cpp-python's OpenAI-compatible server,
serving the bundled tiny teacher converted to GGUF by our exporter. A wrong conversion (tensor names, RoPE style,
vocabulary, template) would show up as garbage answers, so the check is that the teacher still solves its task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from distill.data.prompts import load_prompts
from distill.config import DataConfig
from distill.export.gguf_export import export_gguf
from distill.records import Sampling
from distill.teacher.backends.openai_http import OpenAIChatBackend, Pricing
from distill.verify.math import check_math
from tests.conftest import TINY_TEACHER, free_port, run_cli


# llama.cpp's server samples with a repeat penalty, top_k and min_p by default; the R1 protocol is temperature 0.6
# and top_p 0.95 alone, so a teacher recipe for llama.cpp turns the rest off (teacher.http.extra_body).
LLAMA_CPP_NEUTRAL = {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0}



@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    gguf_path = tmp_path_factory.mktemp("gguf") / "tiny-arith-f32.gguf"
    info = export_gguf(TINY_TEACHER, gguf_path)
    assert info["vocab"] == 452 and info["tensors"] == 50
    port = free_port()
    # The server logs every request to stderr: into a file, never an undrained pipe (a full pipe blocks it).
    log_path = gguf_path.with_suffix(".log")
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path), "--host",
                             "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "1",
                             "--model_alias", "tiny-arith"],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/models", timeout=2) as resp:
                    models = json.loads(resp.read())
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"llama_cpp.server did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.3)
        assert models["data"][0]["id"] == "tiny-arith"
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_gguf_export_gives_the_same_logits_as_transformers(tmp_path, dtype):
    """The exported GGUF, run by llama.cpp itself, computes what the Hugging Face checkpoint computes (f16, the
    CLI's default, up to half-precision rounding)."""
    import numpy as np
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.chat_template import render_prompt

    path = tmp_path / f"tiny-{dtype}.gguf"
    export_gguf(TINY_TEACHER, path, dtype)
    tok = AutoTokenizer.from_pretrained(TINY_TEACHER)
    model = AutoModelForCausalLM.from_pretrained(TINY_TEACHER)
    text = render_prompt(tok, "Ben has 13 pencils. He sells 9, then wins 1 more. How many pencils does Ben have "
                              "now?") + "Ben starts with 13 pencils.\nHe sells 9: 13 - 9 = 4."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    llm = Llama(str(path), n_ctx=512, logits_all=True, verbose=False, n_threads=1)
    try:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids  # same vocabulary and merges
        llm.eval(ids)
        ours = np.array(llm.scores[:len(ids)])
    finally:
        llm.close()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    agree = (ours.argmax(-1) == ref.argmax(-1)).mean()
    print(f"gguf {dtype}: argmax agreement {agree:.3f}, max abs error {np.abs(ours - ref).max():.4f} of max |logit| "
          f"{np.abs(ref).max():.2f}")
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert agree == 1.0 if dtype == "f32" else agree >= 0.95, agree
    assert err < (0.01 if dtype == "f32" else 0.05), err


def test_unsupported_architecture_is_one_clear_error(tmp_path):
    from distill.errors import DistillError

    (tmp_path / "config.json").write_text('{"model_type": "mamba"}')
    with pytest.raises(DistillError, match="convert_hf_to_gguf"):
        export_gguf(tmp_path, tmp_path / "x.gguf")


def test_backend_against_llama_cpp_server_solves_the_task(llama_server):
    prompts = load_prompts(DataConfig(kind="synthetic", heldout_size=24, seed=5), "heldout")
    backend = OpenAIChatBackend(llama_server, "tiny-arith", api_key_env=None, max_in_flight=4, timeout_s=120,
                                pricing=Pricing.free(), split_n=True, name="llama-cpp",
                                extra_body=LLAMA_CPP_NEUTRAL)
    groups = list(backend.generate(prompts, Sampling(temperature=0.6, top_p=0.95, max_new_tokens=160, n=2,
                                                     seed=11)))
    assert sorted(g[0].prompt_id for g in groups) == sorted(p.id for p in prompts)
    samples = [s for g in groups for s in g]
    assert len({s.id for s in samples}) == 48 and not backend.stats.failed
    assert all(s.completion.startswith("<think>\n") for s in samples)  # the prefill, put back
    closed = [s for s in samples if s.reasoning is not None and s.finish_reason == "stop"]
    assert len(closed) >= 44, [s.completion for s in samples if s not in closed][:3]
    correct = sum(check_math(s.gold_answer, s.answer).correct for s in samples)
    print(f"llama.cpp GGUF teacher: {correct}/48 correct, {len(closed)}/48 closed think blocks")
    assert correct >= 28, f"{correct}/48 correct: the GGUF teacher should be close to its 78.5% held-out accuracy"
    assert backend.stats.prompt_tokens > 0 and backend.stats.completion_tokens > 0


def test_llama_cpp_teacher_recipe_through_generate_and_filter(llama_server, tmp_path):
    """The catalog's `llama-cpp` teacher (split_n, extra_body that turns llama.cpp's own sampling extras off),
    driven by the CLI: generate, then filter, as a user would."""
    out = tmp_path / "run"
    args = ["--out", str(out), "--set", "teacher=llama-cpp", "--set", f"teacher.http.base_url={llama_server}",
            "--set", "teacher.sampling.n=2", "--set", "teacher.sampling.max_new_tokens=160",
            "--set", "data.train_size=16"]
    gen = run_cli("teacher", "generate", "tiny", *args)
    assert gen.returncode == 0, gen.stderr
    manifest = json.loads((out / "generations" / "manifest.json").read_text())
    assert manifest["counts"]["samples_total"] == 32 and manifest["tokens"]["requests"] == 32
    assert manifest["config"]["http"]["extra_body"] == LLAMA_CPP_NEUTRAL
    filt = run_cli("teacher", "filter", "tiny", *args)
    assert filt.returncode == 0, filt.stderr
    counts = json.loads((out / "filtered" / "manifest.json").read_text())["counts"]
    assert counts["generated"] == 32 and counts["kept"] >= 16
