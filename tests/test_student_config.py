"""The student recipes, launch configs and machine-dependent choices say what they mean.

Why: the full-scale recipes cannot train here, so what can be checked on a CPU is checked: every recipe validates
and its global batch divides over its GPUs; every accelerate config loads with accelerate's own reader; the ``auto``
rules pick flash-attention/Liger/bf16/trackers only where they exist (and warn when a recipe asks for what is
missing); the TrainConfig fields reach TRL's arguments; and the FLOPs arithmetic behind the MFU benchmark matches
torch's FLOP counter on a real model.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from distill.config import StudentConfig, TrainConfig, load_entry
from distill.errors import DistillError
from distill.student import distributed, efficiency
from distill.student.flops import QWEN25_1_5B, Shape, forward_flops, matmul_params, mfu, training_flops

ROOT = Path(__file__).resolve().parent.parent
R1_RECIPES = sorted((ROOT / "students").glob("r1-distill-*.yaml"))
BASES = {"Qwen/Qwen2.5-Math-1.5B", "Qwen/Qwen2.5-Math-7B", "meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-14B",
         "Qwen/Qwen2.5-32B", "meta-llama/Llama-3.3-70B-Instruct"}


def _accelerate_config(path):
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(str(path))


def test_recipes_cover_the_six_bases_and_are_consistent(monkeypatch):
    seen = set()
    for path in R1_RECIPES:
        s = load_entry("student", str(path))
        t, p = s.train, s.train.parallel
        seen.add(s.base)
        assert s.chat_format == "r1" and t.max_length >= 16384, path.name
        if t.distill_method == "gkd":  # the R1 markers must have the teacher's ids (gkd.check_shared_tokenizer)
            assert s.tokenizer == t.gkd.teacher, path.name
        assert path.read_text().startswith("#"), f"{path.name} must say where its numbers come from"
        gpus = p.nodes * p.gpus_per_node
        ga = distributed.gradient_accumulation(t, gpus)  # raises if the global batch does not divide
        dp = gpus // (p.sequence_parallel_size * p.context_parallel_size)
        assert ga * dp * t.per_device_train_batch_size == t.global_batch_size
        kind = _accelerate_config(ROOT / p.accelerate_config).distributed_type.value
        if s.lora.enabled:
            assert gpus == 1 and kind == "NO", path.name
        if "Math" in s.base:  # 4k native context -> the open reproduction's 32k RoPE stretch
            assert s.rope_theta == 300_000 and s.max_position_embeddings == 32768
        if not s.lora.enabled and ("32B" in s.base or "70B" in s.base):
            assert p.nodes > 1 and kind in ("DEEPSPEED", "FSDP")
        if p.context_parallel_size > 1:
            assert not t.packing and kind == "FSDP"
            monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what accelerate launch sets for fsdp2.yaml
            monkeypatch.setenv("WORLD_SIZE", str(gpus))
            pc = distributed.parallelism_config(p, t.attn_implementation)
            # accelerate refuses to start unless the mesh covers every process (the 70B recipe's 32 GPUs stopped
            # at "total_size (2) does not match num_processes (32)" before dp_shard was given), and FSDP shards
            # over the data-parallel processes beside each ring
            assert pc.total_size == gpus and pc.cp_size == p.context_parallel_size, path.name
            assert pc.dp_shard_size * ga * t.per_device_train_batch_size == t.global_batch_size, path.name
            monkeypatch.delenv("ACCELERATE_USE_FSDP")
            monkeypatch.delenv("WORLD_SIZE")
            assert distributed.pad_to_multiple_of(t) % (2 * p.context_parallel_size) == 0
        if p.sequence_parallel_size > 1:
            assert kind == "DEEPSPEED"
            # on the GPU the recipe is meant for: Ulysses over its flash-attention, batches split evenly
            attn = t.attn_implementation if t.attn_implementation != "auto" else "flash_attention_2"
            monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what accelerate launch sets for zero3.yaml
            monkeypatch.setenv("WORLD_SIZE", str(gpus))
            pc = distributed.parallelism_config(p, attn)
            assert pc.sp_size == p.sequence_parallel_size
            # accelerate sizes DeepSpeed's train_batch_size as micro x accumulation x pc.data_parallel_size, and
            # DeepSpeed refuses to start unless that is the recipe's global batch
            assert pc.data_parallel_size * ga * t.per_device_train_batch_size == t.global_batch_size, path.name
            monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
            monkeypatch.delenv("WORLD_SIZE")
            assert distributed.pad_to_multiple_of(t) % p.sequence_parallel_size == 0
    assert seen == BASES
    seven = load_entry("student", "r1-distill-qwen-7b").train
    assert (seven.learning_rate, seven.num_train_epochs, seven.global_batch_size, seven.max_grad_norm,
            seven.lr_scheduler_kwargs, seven.warmup_ratio) == (4e-5, 5, 128, 0.2, {"min_lr_rate": 0.1}, 0.03)


def test_accelerate_configs_load():
    kinds = {p.stem: _accelerate_config(p) for p in (ROOT / "configs" / "accelerate").glob("*.yaml")}
    assert kinds["ddp"].distributed_type.value == "MULTI_GPU"
    assert kinds["zero2"].deepspeed_config["zero_stage"] == 2
    assert kinds["zero3"].deepspeed_config["zero_stage"] == 3
    assert kinds["zero3"].deepspeed_config["zero3_save_16bit_model"]  # save_trained gathers a plain checkpoint
    assert kinds["fsdp2"].fsdp_config["fsdp_version"] == 2
    # per-process checkpoint shards: a full state dict gathers 16 B/parameter on the main process at every save
    assert kinds["fsdp2"].fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert kinds["fsdp2"].fsdp_config["fsdp_cpu_ram_efficient_loading"]  # only the main process reads the base


def test_slurm_template_is_valid_bash():
    import subprocess

    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "slurm_train.sbatch")], check=True)


def test_existing_student_fields_still_work():
    tiny = load_entry("student", "tiny-arith-student")
    assert TrainConfig().save_steps == 200 and tiny.train.save_steps == 250
    assert tiny.train.bf16 is None and tiny.chat_format == "auto"
    t = TrainConfig(bf16=False, packing=True, gradient_checkpointing=True)
    assert t.bf16 is False and t.packing_strategy == "bfd"
    with pytest.raises(Exception, match="mutually exclusive"):
        TrainConfig(parallel={"sequence_parallel_size": 2, "context_parallel_size": 2})


def test_auto_rules():
    r = efficiency.resolve_attn_implementation
    assert r("auto", cuda=False, have=["flash_attention_2"]) == "sdpa"
    assert r("auto", cuda=True, have=["flash_attention_2"]) == "flash_attention_2"
    assert r("auto", cuda=True, have=[]) == "sdpa"
    assert r("eager", cuda=True, have=[]) == "eager"
    assert r("auto", cuda=False, have=[], packed=True) == "sdpa_varlen"  # packed without flash: per-document SDPA
    assert r("auto", cuda=True, have=["flash_attention_2"], packed=True) == "flash_attention_2"
    with pytest.warns(RuntimeWarning, match="flash_attn is not installed"):
        assert r("flash_attention_2", cuda=True, have=[]) == "sdpa"
    with pytest.warns(RuntimeWarning, match="no GPU"):
        assert r("flash_attention_2", cuda=False, have=["flash_attention_2"]) == "sdpa"
    assert efficiency.resolve_liger(None, cuda=True, have=True) is True
    assert efficiency.resolve_liger(None, cuda=False, have=True) is False
    with pytest.warns(RuntimeWarning, match="is installed"):
        assert efficiency.resolve_liger(True, cuda=True, have=False) is False
    # the pip package (local code, works offline) before Hub kernels (fetched from the Hub)
    assert efficiency.liger_provider(package=True, hub=True) == "liger_kernel"
    assert efficiency.liger_provider(package=False, hub=True) == "hub"
    assert efficiency.liger_provider(package=False, hub=False) is None
    assert efficiency.resolve_bf16(None, cuda=True, supported=True) is True
    assert efficiency.resolve_bf16(None, cuda=False, supported=False) is False
    with pytest.warns(RuntimeWarning):
        assert efficiency.resolve_bf16(True, cuda=False, supported=False) is False
    from distill.student.trackers import resolve_report_to as rt
    assert rt("auto", have_tensorboard=False, have_wandb=False) == []
    assert rt("auto", have_tensorboard=True, have_wandb=True) == ["tensorboard", "wandb"]
    assert rt("none", have_tensorboard=True) == [] and rt("wandb") == ["wandb"]
    assert efficiency.resolve_padding_free(True, "bfd", None) and not efficiency.resolve_padding_free(True,
                                                                                                      "wrapped", None)


def test_weights_dtype_keeps_float32_master_weights_for_full_fine_tuning(monkeypatch):
    """On a bf16 GPU (its answer given: this machine has none), a full fine-tune keeps float32 weights under bf16
    autocast: bf16 weights with a plain optimizer lost the demo student 71 points of pass@1 on an H200. LoRA
    (frozen base) and DeepSpeed (float32 master copies in its optimizer) load bf16; an explicit dtype wins."""
    from distill.student import model as student_model
    from distill.student.miniature import tiny_student

    monkeypatch.setattr(student_model, "resolve_bf16", lambda requested: True)
    full = tiny_student()
    lora = tiny_student().model_copy(update={"lora": full.lora.model_copy(update={"enabled": True})})
    assert student_model.weights_dtype(full, launcher="a plain launch") is torch.float32
    assert student_model.weights_dtype(full, launcher="fsdp") is torch.float32  # FSDP2 shards what it is given
    assert student_model.weights_dtype(full, launcher="deepspeed") is torch.bfloat16
    assert student_model.weights_dtype(lora, launcher="a plain launch") is torch.bfloat16
    assert student_model.weights_dtype(full.model_copy(update={"dtype": "bfloat16"}), "a plain launch") \
        is torch.bfloat16
    monkeypatch.setattr(student_model, "resolve_bf16", lambda requested: False)  # the CPU
    assert student_model.weights_dtype(lora, launcher="deepspeed") is torch.float32


def test_bf16_trained_student_is_published_in_bf16(tmp_path):
    """float32 master weights are an optimiser detail: the saved student (and its untrained baseline) is bf16 when
    it trains in bf16, as the published R1-Distill checkpoints are, and loads back as such."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from distill.student.model import save_model
    from tests.tiny_models import build_tiny_teacher

    tok = AutoTokenizer.from_pretrained(build_tiny_teacher(tmp_path / "teacher"))
    model = AutoModelForCausalLM.from_config(Qwen2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                         num_attention_heads=2, num_key_value_heads=1,
                                                         vocab_size=len(tok), tie_word_embeddings=True))
    save_model(model, tok, tmp_path / "out", dtype=torch.bfloat16)
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
        assert "lm_head.weight" not in f.keys()  # tied to the embeddings: written once, as without the cast
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert reloaded.dtype == torch.bfloat16
    # the baseline is saved before training: the model in memory keeps its float32 master weights
    assert model.dtype == torch.float32
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name].float(), tensor.to(torch.bfloat16).float()), name
    # FSDP's gathered weights (copies, the tied head re-pointed at the embeddings by train.save_trained): the
    # same bf16 files; before, FSDP runs wrote their float32 master weights and the config said float32
    gathered = {k: v.clone() for k, v in model.state_dict().items()}
    gathered["lm_head.weight"] = gathered["model.embed_tokens.weight"]
    save_model(model, tok, tmp_path / "fsdp", state_dict=gathered, dtype=torch.bfloat16)
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "fsdp" / name).read_bytes() == (tmp_path / "out" / name).read_bytes(), name


def test_global_batch_and_parallelism(monkeypatch):
    t = TrainConfig(per_device_train_batch_size=2, global_batch_size=128, parallel={"sequence_parallel_size": 2})
    assert distributed.gradient_accumulation(t, 16) == 8  # 16 GPUs / SP 2 = 8 data-parallel x 2 x 8 = 128
    assert distributed.gradient_accumulation(TrainConfig(gradient_accumulation_steps=3), 8) == 3
    with pytest.raises(DistillError, match="not a multiple"):
        distributed.gradient_accumulation(TrainConfig(global_batch_size=100, per_device_train_batch_size=3), 8)
    with pytest.raises(DistillError, match="cannot be split"):
        distributed.data_parallel_size(t.parallel, 3)
    assert distributed.parallelism_config(TrainConfig().parallel) is None
    # each scheme needs the launcher that implements it: a clear error instead of accelerate's traceback
    with pytest.raises(DistillError, match="launch with a DeepSpeed config"):
        distributed.parallelism_config(t.parallel)
    with pytest.raises(DistillError, match="launch with configs/accelerate/fsdp2.yaml, not deepspeed"):
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
        distributed.parallelism_config(TrainConfig(parallel={"context_parallel_size": 4}).parallel)
    monkeypatch.setenv("WORLD_SIZE", "16")
    sp = distributed.parallelism_config(t.parallel)
    assert sp.sp_size == 2 and sp.sp_backend == "deepspeed" and sp.sp_handler.sp_seq_length_is_variable
    assert sp.data_parallel_size == 8  # the replicas beside the SP groups: DeepSpeed's train_batch_size needs them
    assert sp.sp_handler.sp_attn_implementation == "flash_attention_2"  # the model's: DeepSpeed refuses another
    assert distributed.parallelism_config(t.parallel, "sdpa").sp_handler.sp_attn_implementation == "sdpa"
    # Ulysses drops the mask and passes the gathered position ids: SDPA would let packed examples attend to each
    # other; flash-attention and sdpa_varlen find the documents in the position ids
    with pytest.raises(DistillError, match="packed examples would attend to each other"):
        distributed.parallelism_config(t.parallel, "sdpa", packed=True)
    for attn in ("sdpa_varlen", "flash_attention_2"):
        handler = distributed.parallelism_config(t.parallel, attn, packed=True).sp_handler
        assert handler.sp_attn_implementation == attn  # the model's own, which DeepSpeed wraps
    with pytest.raises(ValueError, match="needs per_device_train_batch_size 1 \\(not 4\\)"):
        TrainConfig(packing=True, per_device_train_batch_size=4, parallel={"sequence_parallel_size": 2})
    with pytest.raises(ValueError, match="ring attention keeps only the causal mask"):
        TrainConfig(packing=True, parallel={"context_parallel_size": 2})
    for parallel in ({"sequence_parallel_size": 2}, {"context_parallel_size": 2}):
        with pytest.raises(ValueError, match="GKD trainer samples from and scores whole sequences"):
            TrainConfig(distill_method="gkd", parallel=parallel)
    with pytest.raises(DistillError, match="supports flash_attention_2"):
        distributed.parallelism_config(t.parallel, "eager")
    # every batch's length must split evenly over the sequence-parallel group
    assert distributed.pad_to_multiple_of(t) == 2 and distributed.pad_to_multiple_of(TrainConfig()) is None
    assert distributed.pad_to_multiple_of(TrainConfig(pad_to_multiple_of=64, parallel={"sequence_parallel_size": 4})) \
        == 64
    with pytest.raises(ValueError, match="must be a multiple of parallel.sequence_parallel_size 4"):
        TrainConfig(pad_to_multiple_of=6, parallel={"sequence_parallel_size": 4})
    # and over a ring: a head and a tail chunk per GPU, which torch's load balancer needs (else it is skipped)
    ring = TrainConfig(parallel={"context_parallel_size": 2})
    assert distributed.pad_to_multiple_of(ring) == 4
    assert distributed.pad_to_multiple_of(ring.model_copy(update={"pad_to_multiple_of": 64})) == 64
    with pytest.raises(ValueError, match="must be a multiple of 2 x parallel.context_parallel_size = 4"):
        TrainConfig(pad_to_multiple_of=6, parallel={"context_parallel_size": 2})
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("WORLD_SIZE", "8")
    cp = distributed.parallelism_config(TrainConfig(parallel={"context_parallel_size": 4}).parallel)
    assert cp.cp_size == 4 and cp.cp_backend == "torch" and cp.dp_shard_size == 2 and cp.total_size == 8


def test_more_gpus_than_present_is_refused_before_loading():
    from distill.config import ParallelSettings

    one, eight = ParallelSettings(), ParallelSettings(gpus_per_node=8, accelerate_config="configs/accelerate/zero3.yaml")
    assert distributed.check_gpus(one, visible=0, local_processes=1, world=1) is None  # the CPU demo
    assert distributed.check_gpus(eight, visible=8, local_processes=8, world=8) is None
    with pytest.raises(DistillError, match="8 processes on this node but 4 GPUs visible"):
        distributed.check_gpus(eight, visible=4, local_processes=8, world=8)
    with pytest.raises(DistillError, match="asks for 8 GPUs per node and this node has 4 GPUs visible.*"
                                           "gpus_per_node=4"):
        distributed.check_gpus(eight, visible=4, local_processes=4, world=4)
    with pytest.raises(DistillError, match="this node has 0 GPUs visible"):
        distributed.check_gpus(eight, visible=0, local_processes=1, world=1)
    with pytest.raises(DistillError, match="train.parallel.sequence_parallel_size: 1 process cannot be split into "
                                           "sequence/context-parallel groups of 2"):
        distributed.check_gpus(ParallelSettings(sequence_parallel_size=2), visible=0, local_processes=1, world=1)
    hint = distributed.check_gpus(eight, visible=8, local_processes=1, world=1)  # fits, but uses one GPU of 8
    assert "accelerate launch --config_file configs/accelerate/zero3.yaml" in hint
    # a GPU config (bf16) launched on a node without GPUs; the same processes in fp32 are CPU processes (tests)
    with pytest.raises(DistillError, match="8 processes in bf16 .* this node has 0 GPUs visible.*mixed_precision: no"):
        distributed.check_gpus(one, visible=0, local_processes=8, world=8, mixed_precision="bf16")
    assert distributed.check_gpus(one, visible=0, local_processes=2, world=2, mixed_precision="no") is None


def test_cli_recipe_wanting_more_gpus_than_present_fails_fast(tmp_path):
    """On this machine (no GPU) a recipe laid out for 8 GPUs per node stops before any weights load."""
    from distill.manifest import Stage
    from distill.student.miniature import write_kept
    from tests.conftest import run_cli

    run = tmp_path / "run"
    write_kept(run / "filtered" / "kept", 4)
    Stage("filter", run / "filtered", "test").finish()
    proc = run_cli("student", "train", "tiny", "--out", str(run), "--set", "student.train.parallel.gpus_per_node=8")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "train.parallel.gpus_per_node: the recipe asks for 8 GPUs per node and this node has 0 GPUs" in proc.stderr
    assert not (run / "student" / "manifest.json").exists()


def test_train_fields_reach_trl(tmp_path):
    from tests.tiny_models import build_tiny_tokenizer

    from distill.student.train import training_args

    tok = build_tiny_tokenizer(tmp_path / "tok")
    cfg = StudentConfig(init_config={}, train={"save_steps": 7, "packing": True, "lr_scheduler_type":
                                               "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": 0.1},
                                               "global_batch_size": 8, "per_device_train_batch_size": 2,
                                               "report_to": "none", "max_grad_norm": 0.2})
    args = training_args(cfg, tmp_path, tok)
    assert args.save_steps == 7 and args.packing and args.padding_free and args.packing_strategy == "bfd"
    assert args.gradient_accumulation_steps == 4 and args.max_grad_norm == 0.2
    assert args.lr_scheduler_kwargs == {"min_lr_rate": 0.1} and args.report_to == []
    assert args.include_num_input_tokens_seen == "non_padding"  # logs train_tokens_per_second of real tokens
    assert args.bf16 is False and args.use_liger_kernel is False  # resolved for this CPU
    assert args.completion_only_loss and args.eos_token == tok.eos_token


def test_flops_match_torch_flop_counter():
    """Eager attention is plain matmuls, so FlopCounterMode sees every FLOP: the arithmetic must match exactly
    (counted over the full square; MFU uses the causal half)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    ids = torch.randint(0, 300, (1, 40))
    with FlopCounterMode(display=False) as fwd:
        model(input_ids=ids)
    with FlopCounterMode(display=False) as train:
        model(input_ids=ids, labels=ids).loss.backward()
    shape = Shape.of(config)
    assert fwd.get_total_flops() == forward_flops(shape, [40], causal=False)
    assert train.get_total_flops() == training_flops(shape, [40], causal=False)
    # packing: two documents of 20 score 2 x 20^2 pairs, not 40^2
    assert forward_flops(shape, [20, 20], causal=False) < forward_flops(shape, [40], causal=False)


def test_qwen_1_5b_flops_plan_for_the_gpu_benchmark():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**QWEN25_1_5B)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert matmul_params(Shape.of(config)) == linear  # 1.54B: the published Qwen2.5-1.5B size (tied head)
    assert 1.5e9 < linear < 1.6e9
    spec = importlib.util.spec_from_file_location("gpu_mfu", ROOT / "benchmarks" / "gpu_mfu.py")
    gpu_mfu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_mfu)
    info = gpu_mfu.plan(16384)
    # 6 x params per token + causal attention (12 x layers x hidden x mean context) per token
    per_token = 6 * linear + 12 * 28 * 1536 * (16384 + 1) / 2
    assert info["train_flops_per_token"] == pytest.approx(per_token, rel=1e-9)
    assert gpu_mfu.doc_lengths(10, 3) == [4, 3, 3]
    assert mfu(989e12 * 0.5, 1.0) == pytest.approx(0.5)


@pytest.mark.parametrize("docs", [1, 4])
def test_gpu_benchmark_step_runs_on_a_tiny_model(docs):
    """The timed step of benchmarks/gpu_mfu.py is the same code on a CPU and a tiny Qwen2 config, so it cannot rot
    between the rare sessions that have a GPU: it runs optimiser steps to a finite loss near ln(vocab) (random
    weights, the benchmark's lr 1e-5), packed documents go through sdpa_varlen with their boundaries, and the
    FLOPs it divides by are those of the plan."""
    spec = importlib.util.spec_from_file_location("gpu_mfu", ROOT / "benchmarks" / "gpu_mfu.py")
    gpu_mfu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_mfu)
    tiny = dict(QWEN25_1_5B, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=128)
    res = gpu_mfu.measure(tokens=64, docs=docs, steps=3, warmup=1, checkpointing=False, attn="auto", peak=1e-6,
                          config=tiny, device="cpu")
    assert res["device"] == "cpu" and res["docs"] == docs
    assert res["attn_implementation"] == ("sdpa_varlen" if docs > 1 else "sdpa")
    assert 0.8 * math.log(128) < res["loss"] < 1.2 * math.log(128)
    flops = gpu_mfu.plan(64, docs, tiny)["train_flops_per_step"]
    assert res["mfu"] == pytest.approx(flops / res["seconds_per_step"] / 1e6, rel=0.02)  # peak 1e-6 TFLOPS
