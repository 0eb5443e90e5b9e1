"""The untrained baseline (RUN/student/init) is written under ZeRO-3 too, holding exactly the weights training
starts from.

Why: the eval stage compares the trained student with this folder. Under ZeRO-3 (``zero3_init_flag``) every
process holds a shard of each weight, so the old launcher skipped the folder and the baseline eval had nothing to
load. model.save_untrained gathers the shards module by module (distributed.consolidated_state_dict).

Two tests run everywhere: the gather walk on an ordinary model equals ``state_dict()`` (tied weights come out
once), and a stand-in partitioning that empties every parameter outside its gather shows the walk reads each
weight only inside one. The real thing needs DeepSpeed, which is not a dependency of this project: with it
installed, two CPU processes (torchrun, gloo) build a student under a registered ZeRO-3 config, exactly as the
launcher does, save the baseline, and it must equal both an all-at-once gather of the live shards and a
one-process build of the same base (the R1 rows written into the base's spare rows included).

This file doubles as the worker script: ``torchrun ... tests/test_student_zero3.py BASE OUT``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _tiny_model(tie: bool):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie))


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_gather_walk_equals_the_state_dict_and_saves_a_loadable_init(tmp_path, tie):
    from transformers import AutoModelForCausalLM

    from distill.student.distributed import consolidated_state_dict
    from distill.student.model import save_untrained
    from tests.tiny_models import build_tiny_tokenizer

    model = _tiny_model(tie)
    state = consolidated_state_dict(model, is_main=True)
    expected = model.state_dict()
    assert list(state) == list(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert all(state[k].data_ptr() != expected[k].data_ptr() for k in expected)  # CPU copies, not views
    assert (state["lm_head.weight"] is state["model.embed_tokens.weight"]) == tie  # one tensor under both names
    assert consolidated_state_dict(model, is_main=False) == {}

    save_untrained(model, build_tiny_tokenizer(tmp_path / "tok"), tmp_path / "init", is_main=True)
    ids = torch.tensor([[1, 5, 9, 12, 40]])
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path / "init")(ids).logits, model(ids).logits)


def test_gather_walk_reads_each_weight_only_inside_its_gather():
    """A stand-in for ZeRO-3 (deepspeed is not installed here): outside a gather every parameter holds an empty
    tensor, as a partitioned one does; inside, its full value. The walk must still return every full weight, and
    gather each module's own parameters one module at a time (the memory bound the docstring promises)."""
    from distill.student.distributed import consolidated_state_dict

    model = _tiny_model(tie=True)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    full = {id(p): p.data for p in model.parameters()}
    for p in model.parameters():
        p.data = torch.empty(0, dtype=p.dtype)
    gathers: list[int] = []

    @contextlib.contextmanager
    def gather(params):
        gathers.append(len(params))
        for p in params:
            p.data = full[id(p)]
        yield
        for p in params:
            p.data = torch.empty(0, dtype=p.dtype)

    state = consolidated_state_dict(model, is_main=True, gather=gather)
    assert list(state) == list(expected) and all(torch.equal(state[k], expected[k]) for k in expected)
    assert max(gathers) <= 2  # a module's own weight and bias, never a whole subtree
    assert all(p.numel() == 0 for p in model.parameters())  # nothing left gathered


def _base_with_spare_rows(folder: Path) -> Path:
    """A Qwen2.5-like base: its tokenizer lacks the R1 markers and its embedding has spare rows (Qwen2.5 pads its
    matrix), so install_r1_format writes the markers' mean rows into the existing, partitioned matrix."""
    from tests.test_student_base_model import _qwen_like_base
    from transformers import AutoConfig, Qwen2ForCausalLM

    _qwen_like_base(folder)
    config = AutoConfig.from_pretrained(folder)
    config.vocab_size += 16
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder


def _student(base: Path):
    from distill.student.miniature import tiny_student

    return tiny_student().model_copy(update={"base": str(base), "init_config": None, "chat_format": "r1"})


def test_zero3_baseline_is_the_model_training_starts_from(tmp_path):
    from transformers import AutoModelForCausalLM

    from distill.student.model import build_student
    from tests.conftest import free_port, worker_env

    base = _base_with_spare_rows(tmp_path / "base")
    env = worker_env()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), str(Path(__file__)), str(base), str(tmp_path / "z3")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    init = AutoModelForCausalLM.from_pretrained(tmp_path / "z3" / "init").state_dict()
    live = torch.load(tmp_path / "z3" / "gathered.pt")  # the shards training starts from, gathered all at once
    assert set(live) <= set(init) and all(torch.equal(init[k], live[k]) for k in live)
    one_process, _ = build_student(_student(base), teacher_model="unused")
    reference = one_process.state_dict()
    assert set(init) == set(reference)
    assert all(torch.equal(init[k], reference[k]) for k in reference), \
        [k for k in reference if not torch.equal(init[k], reference[k])]


def _worker(base: str, out: str) -> None:
    """What launch.main does up to the baseline, under ZeRO-3: the DeepSpeed config is registered before the model
    is built (launch.zero3_init_guard does it through TrainingArguments under accelerate; HfDeepSpeedConfig is the
    same registration without accelerate's launcher, which does not start DeepSpeed on a CPU)."""
    import warnings

    warnings.simplefilter("ignore")
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    from distill.student.distributed import is_zero3_partitioned
    from distill.student.model import save_untrained
    from distill.student.model import build_student

    deepspeed.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()
    registered = HfDeepSpeedConfig({"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}})
    model, tok = build_student(_student(Path(base)), teacher_model="unused")
    del registered
    assert is_zero3_partitioned(model) and all(p.numel() == 0 for p in model.parameters())
    save_untrained(model, tok, Path(out) / "init", is_main=rank == 0)
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        if rank == 0:
            torch.save({n: p.detach().clone() for n, p in model.named_parameters()}, Path(out) / "gathered.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    # Skip interpreter teardown. In two full-suite runs (one of them CI) rank 1 aborted with "terminate called
    # without an active exception" even after destroy_process_group: torch's known gloo shutdown race (pytorch
    # PR 179291), where DeepSpeed's ZeRO-3 gather work is freed by gloo's C++ threads after Python is gone.
    # Everything this worker owes is written and both ranks passed the barrier; the test checks the files.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":  # a torchrun worker
    _worker(*sys.argv[1:3])
