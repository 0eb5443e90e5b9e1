"""Per-GPU memory of a student recipe, before any weights load: what ``distill student plan`` prints and what the
launch checks against the GPUs it finds.

Why: out-of-memory at long context is the failure reasoning SFT users hit most (REFERENCE.md pitfall 4), and it
comes late: a 70B recipe spends many minutes loading shards over 32 GPUs before its first step runs out. The
arithmetic is cheap and mostly exact, so it is done up front, per GPU:

- **states**: weights, gradients and AdamW moments, as each launcher lays them out: one process or DDP keep
  everything (float32 master weights, model.weights_dtype; DDP adds its gradient buckets), ZeRO-2 shards the
  optimizer and gradients, ZeRO-3 and FSDP2 also the weights (ZeRO paper's 2 + 2 + 12 bytes per parameter, over
  the processes; DeepSpeed adds its reduce bucket), ZeRO-3 offload moves the float32 part and the gradient
  partitions to host memory, LoRA freezes a bf16 base, QLoRA an NF4 one. Exact up to allocator slack.
- **activations**: what autograd keeps for the backward pass, per layer and token, counted from the tensors the
  transformers Qwen2/Llama layers save (tests/test_student_memory.py counts them with saved-tensor hooks on real
  layers, in float32, bf16 autocast over float32 weights, and bf16), times the layers and the tokens each GPU
  holds (sequence/context parallelism divides them). Gradient checkpointing keeps each layer's input instead and
  recomputes one layer at a time. Liger's fused kernels keep less (their saved tensors, read from its source).
- **logits**: without Liger's fused linear cross-entropy the loss keeps float32 logits (4 bytes x vocabulary per
  token: 9.3 GiB for a 16k row of Qwen's 151,936 tokens); the backward adds their float32 gradient, and under bf16
  the model's bf16 logits and their gradient: 12 bytes x vocabulary per token in all.

- **GKD** (distill_method: gkd): the teacher's weights on every GPU (bf16 when training in bf16; ZeRO-3 shards
  them, TRL prepares the teacher with the student's DeepSpeed stage), and the generalised JSD over full logits:
  the student's and the teacher's logits and the gradient buffer of the chunked loss (jsd.py), plus the loss's
  vocabulary-wide temporaries for one chunk of tokens (12 per token at 0 < beta < 1, 5 at beta 0, 6 at 1),
  measured with torch's memory profiler (the test). No fused cross-entropy: GKD calls the model without labels.
  At 32k tokens of Qwen's 152,064-token vocabulary under ZeRO-3 that is 29.6 GiB (TRL's own loss: 158 GiB).

Checked against one H200 (benchmarks/gpu_mfu.py, a Qwen2.5-1.5B-shaped step, bf16 weights, torch's peak
allocation): 16k tokens with plain SDPA measured 80.9 GiB, with Liger 40.8 GiB, 32k with Liger and checkpointing
14.6 GiB; the plan says 83.5, 42.8 and 16.4 GiB (tests/test_student_memory.py::
test_plan_matches_the_h200_measurements; it counts gradients whole, as under gradient accumulation, which that
benchmark does not use). Not counted: the CUDA context (~0.5-1 GiB), NCCL buffers, allocator fragmentation, a GKD
teacher's forward (one layer at a time, no gradients: about 3 x intermediate + 4 x hidden values per token, some
6 GiB at 32k tokens of a 32B teacher) and on-policy generation's KV cache (between steps). So a plan reports
*fits* only with a margin (``HEADROOM``), and the launch only refuses where the states alone cannot fit.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import StudentConfig
from ..errors import DistillError
from .flops import Shape

GiB = 1024 ** 3
HEADROOM = 0.9  # a plan "fits" up to 90% of the GPU: the CUDA context, NCCL and fragmentation take the rest
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4 bits + double-quantised absmax (8 bits per 64, fp32 per 256 blocks)
# DeepSpeed's gradient reduce bucket, bf16, on the GPU (ZeRO-2 and ZeRO-3, offloaded or not): accelerate builds the
# DeepSpeed config from the YAML without a reduce_bucket_size, so transformers' "auto" (hidden^2) never applies and
# DeepSpeed's default of 5e8 elements does (DeepSpeedZeroConfig.reduce_bucket_size; ~0.93 GiB, one buffer: stage 2
# has no overlap_comm by default, stage 3 one bucket per dtype)
ZERO_REDUCE_BUCKET_BYTES = 2 * 500_000_000
Layout = Literal["one GPU", "DDP", "ZeRO-2", "ZeRO-3", "ZeRO-3 offload", "FSDP2"]
SHARDED = ("ZeRO-3", "ZeRO-3 offload", "FSDP2")  # layouts that shard the weights too
Precision = Literal["float32", "autocast", "bfloat16"]


@dataclass(frozen=True)
class ModelCounts:
    """What the states depend on, counted on the model itself (built on the meta device: no memory)."""
    params: int  # all parameters, tied ones once
    layer_linear: int  # weights of the decoder layers' nn.Linear modules (what QLoRA quantises, LoRA adapts)
    layer_params: int  # one decoder layer (what FSDP2/ZeRO-3 gather at a time)
    lora_params: int = 0  # the adapters a LoRA recipe adds
    adapter_inputs: int = 0  # one layer's adapters: the sum of their input widths (each keeps its dropped-out input)
    adapter_ranks: int = 0  # one layer's adapters: r x their number (each keeps its r-wide down-projection)


def count_model(config: Any, lora: Any = None) -> ModelCounts:
    """Count parameters on a meta-device model of ``config`` (real transformers classes; milliseconds for a 70B)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layers = model.model.layers
    targets = lora.target_modules if lora is not None and lora.enabled else None

    def adapted(module: Any) -> list[Any]:
        return [m for name, m in module.named_modules() if isinstance(m, torch.nn.Linear) and targets
                and (targets == "all-linear" or name.rsplit(".", 1)[-1] in targets)]

    r = lora.r if targets else 0
    return ModelCounts(params=sum(p.numel() for p in model.parameters()),
                       layer_linear=sum(m.weight.numel() for m in layers.modules() if isinstance(m, torch.nn.Linear)),
                       layer_params=sum(p.numel() for p in layers[0].parameters()),
                       lora_params=sum(r * (m.in_features + m.out_features) for m in adapted(layers)),
                       adapter_inputs=sum(m.in_features for m in adapted(layers[0])),
                       adapter_ranks=r * len(adapted(layers[0])))


def layer_bytes_per_token(s: Shape, precision: Precision, liger: bool = False) -> int:
    """Bytes one decoder layer keeps for the backward pass per token, without checkpointing.

    ``precision``: float32 (CPU), autocast (bf16 matmuls over float32 master weights: the residual stream stays
    float32), bfloat16 (bf16 weights: DeepSpeed, FSDP2's mixed precision, LoRA bases). Counted from what the
    layers save (the test checks it against saved-tensor hooks on real transformers layers):

    - each RMSNorm keeps a float32 copy of its input, the normalised input (residual dtype) and a float32 inverse
      RMS per token, and its output is kept by the projections it feeds: once in float32/bf16, but under
      autocast each projection keeps its own bf16 cast (3 for q/k/v, 2 for gate/up);
    - attention keeps q, k, v and its output (compute dtype) and a float32 logsumexp per head;
    - the SwiGLU MLP keeps gate, up, SiLU(gate) and their product: 4 x intermediate.

    Liger's kernels (GPU only, read from liger-kernel's autograd functions): its RMSNorm keeps its input and a
    float per token; its SwiGLU keeps gate and up, the down projection its input: 3 x intermediate."""
    act = 4 if precision == "float32" else 2
    resid = 2 if precision == "bfloat16" else 4
    q, kv, h = s.heads * s.head_dim, s.kv_heads * s.head_dim, s.hidden
    attention = act * (2 * q + 2 * kv) + 4 * s.heads
    norm_inputs = (3 + 2) * 2 * h if precision == "autocast" else 2 * act * h  # what the projections keep
    if liger:
        return 2 * (resid * h + 4) + norm_inputs + attention + 3 * act * s.intermediate
    return 2 * (4 * h + resid * h + 4) + norm_inputs + attention + 4 * act * s.intermediate


@dataclass
class MemoryPlan:
    """Per-GPU bytes of one training step at ``tokens`` per GPU."""
    layout: Layout
    processes: int
    tokens: int
    params: int
    precision: Precision
    parts: dict[str, int] = field(default_factory=dict)  # states and activations, in the order printed
    host_per_node: int = 0  # what an offloading layout keeps in each node's RAM instead
    ulysses_sizes: list[int] = field(default_factory=list)  # the SP sizes its heads and processes allow

    @property
    def states(self) -> int:
        return sum(v for k, v in self.parts.items() if k in STATE_PARTS)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def fits(self, gpu_bytes: int) -> bool:
        return self.total <= HEADROOM * gpu_bytes

    def summary(self, student: StudentConfig) -> str:
        t = student.train
        split = t.parallel.sequence_parallel_size * t.parallel.context_parallel_size
        how = [self.precision] + (["Liger"] if t.use_liger_kernel else []) + (
            ["gradient checkpointing"] if t.checkpointing(on_gpu=True) else []) + (
            [f"LoRA r{student.lora.r}" + (" on NF4" if student.lora.quantization == "nf4" else "")]
            if student.lora.enabled else [])
        return (f"{student.name}: {student.base or 'init_config'} ({self.params / 1e9:.2f}B parameters), "
                f"{self.layout} over {self.processes} GPU(s), {self.tokens:,} tokens per GPU "
                f"({t.per_device_train_batch_size} x {t.max_length:,}" + (f" / {split}" if split > 1 else "")
                + f"), {', '.join(how)}")

    def table(self, gpu_bytes: int | None = None) -> str:
        rows = [f"{name:<28} {v / GiB:8.1f} GiB" for name, v in self.parts.items()]
        rows.append(f"{'total per GPU':<28} {self.total / GiB:8.1f} GiB")
        if gpu_bytes:
            verdict = "fits" if self.fits(gpu_bytes) else "does NOT fit"
            rows.append(f"{verdict} a GPU of {gpu_bytes / GiB:.0f} GiB (plans use up to {HEADROOM:.0%} of it)")
        if self.host_per_node:
            rows.append(f"{'host memory per node':<28} {self.host_per_node / GiB:8.1f} GiB (offloaded optimizer)")
        return "\n".join(rows)


STATE_PARTS = ("weights", "bf16 weight copies", "gradients", "optimizer (AdamW)", "DDP gradient buckets",
               "gathered layers (bf16)", "GKD teacher weights")


def layout_of(student: StudentConfig, *, world: int | None = None, launcher: str | None = None,
              zero_stage: int | None = None, offload: bool = False) -> tuple[Layout, int]:
    """(layout, processes) for a recipe: from the running launch when given (``launcher`` as
    distributed.launcher_kind says), else from the recipe's accelerate config and its nodes x GPUs."""
    p = student.train.parallel
    processes = world if world is not None else p.nodes * p.gpus_per_node
    if launcher is None:
        launcher, zero_stage, offload = _accelerate_config_kind(p.accelerate_config)
    if launcher == "deepspeed":
        if zero_stage == 3:
            return ("ZeRO-3 offload" if offload else "ZeRO-3"), processes
        return "ZeRO-2", processes
    if launcher == "fsdp":
        return "FSDP2", processes
    return ("DDP" if processes > 1 else "one GPU"), processes


def _accelerate_config_kind(path: str | None) -> tuple[str | None, int | None, bool]:
    """(launcher, ZeRO stage, optimizer offloaded) as an accelerate config file sets them up."""
    if not path:
        return None, None, False
    from ..catalog import resolve_path
    from ..config import read_yaml

    file = resolve_path(path)
    if not Path(file).is_file():
        raise DistillError("accelerate config not found", where=f"train.parallel.accelerate_config: {path}")
    data = read_yaml(Path(file))
    kind = {"DEEPSPEED": "deepspeed", "FSDP": "fsdp"}.get(str(data.get("distributed_type", "")).upper())
    deepspeed = data.get("deepspeed_config") or {}
    stage = deepspeed.get("zero_stage")
    return (kind, int(stage) if stage is not None else None,
            str(deepspeed.get("offload_optimizer_device", "none")).lower() in ("cpu", "nvme"))


def precision_of(student: StudentConfig, layout: Layout) -> Precision:
    """How the matmuls and the residual stream run on a bf16 GPU: as model.weights_dtype loads the weights, and
    as FSDP2's bf16 mixed precision casts them per layer."""
    from .efficiency import resolve_bf16

    if not resolve_bf16(student.train.bf16, cuda=True, supported=True):
        return "float32"
    if student.dtype == "bfloat16" or student.lora.enabled or layout == "ZeRO-2" or layout in SHARDED:
        return "bfloat16"
    return "autocast"


def adapter_bytes_per_token(counts: ModelCounts, lora: Any) -> int:
    """What one layer's LoRA adapters add to :func:`layer_bytes_per_token`: with dropout each keeps its dropped-out
    input, and each keeps its r-wide output. Fitted to PEFT's saved tensors (within 10% on a bf16 base under
    autocast, the test), not derived: PEFT casts each adapter's input its own way."""
    return 4 * counts.adapter_inputs * (lora.dropout > 0) + 8 * counts.adapter_ranks


def plan_recipe(student: StudentConfig, teacher: str | None = None) -> MemoryPlan:
    """The plan of a recipe as written: its base's shape, its accelerate config over its nodes x GPUs, and for GKD
    its teacher (train.gkd.teacher, else ``teacher``: the run's)."""
    from .distributed import (check_long_context_launcher, check_ulysses_heads, data_parallel_size,
                              gradient_accumulation)

    layout, processes = layout_of(student)
    launcher, _, _ = _accelerate_config_kind(student.train.parallel.accelerate_config)
    check_long_context_launcher(student.train.parallel, launcher=launcher or "a plain launch")
    config = base_config(student)
    # a layout the launch would refuse is refused here too, not planned as if it would run: sequence/context
    # groups that do not divide the processes, a global batch they do not divide, heads Ulysses cannot split
    data_parallel_size(student.train.parallel, processes)
    gradient_accumulation(student.train, processes)
    check_ulysses_heads(student.train.parallel, config)
    return plan_memory(student, config, layout=layout, processes=processes,
                       teacher_config=gkd_teacher_config(student, teacher))


def gkd_teacher_config(student: StudentConfig, teacher: str | None = None) -> Any | None:
    """The GKD teacher's config (train.gkd.teacher, else ``teacher``), or None when the student does not train
    with GKD or no teacher is named yet."""
    if student.train.distill_method != "gkd":
        return None
    ref = student.train.gkd.teacher or teacher
    return model_config(ref, "the GKD teacher's config") if ref else None


def gkd_loss_bytes(tokens: int, vocab: int, precision: Precision, layout: Layout, beta: float) -> int:
    """What GKD's loss holds (jsd.chunked_generalized_jsd_loss): the student's logits (with their graph), the
    teacher's and the student's gradient buffer, in the model's output dtype, and one chunk's vocabulary-wide
    temporaries, in float32 where autocast runs the loss (log_softmax is one of its float32 ops) and in bf16 under
    DeepSpeed, which trains bf16 weights without autocast."""
    from .jsd import CHUNK_TEMPORARIES, CHUNK_TOKENS, MIXTURE_CHUNK_TEMPORARIES

    logits = 4 if precision == "float32" else 2
    loss = 2 if precision == "bfloat16" and layout.startswith("ZeRO") else 4
    temporaries = CHUNK_TEMPORARIES.get(float(beta), MIXTURE_CHUNK_TEMPORARIES)
    return vocab * (3 * logits * tokens + loss * temporaries * min(CHUNK_TOKENS, tokens))


def plan_memory(student: StudentConfig, config: Any, *, layout: Layout, processes: int,
                precision: Precision | None = None, teacher_config: Any | None = None) -> MemoryPlan:
    """The per-GPU memory of ``student`` (its train settings) on ``config``'s architecture; ``precision`` as
    :func:`precision_of` says for the layout unless given; ``teacher_config``: a GKD teacher's architecture (its
    weights are then counted; the GKD loss's logits are counted whenever the student trains with GKD)."""
    from .distributed import ulysses_sizes

    precision = precision or precision_of(student, layout)
    t, lora = student.train, student.lora
    counts = count_model(config, lora)
    shape = Shape.of(config)
    liger = bool(t.use_liger_kernel)
    split = t.parallel.sequence_parallel_size * t.parallel.context_parallel_size
    tokens = t.per_device_train_batch_size * t.max_length // split
    plan = MemoryPlan(layout=layout, processes=processes, tokens=tokens, params=counts.params, precision=precision,
                      ulysses_sizes=ulysses_sizes(config, processes))
    P, n = counts.params, max(processes, 1)
    parts = plan.parts

    if lora.enabled:
        frozen_linear = counts.layer_linear
        if lora.quantization == "nf4":
            parts["weights"] = int(frozen_linear * NF4_BYTES + (P - frozen_linear) * 2)  # embeddings, head: bf16
        else:
            parts["weights"] = 2 * P
        # PEFT keeps the adapters in float32 (weights, gradients, AdamW moments); ZeRO-2 shards the last two
        parts["weights"] += 4 * counts.lora_params
        shard = n if layout == "ZeRO-2" else 1
        parts["gradients"] = 4 * counts.lora_params // shard
        parts["optimizer (AdamW)"] = 8 * counts.lora_params // shard
    elif layout in ("one GPU", "DDP"):
        master = 2 if precision == "bfloat16" else 4
        parts["weights"] = master * P
        if precision == "autocast":
            parts["bf16 weight copies"] = 2 * P  # autocast's casts of each matmul weight, kept for the backward
        parts["gradients"] = master * P
        parts["optimizer (AdamW)"] = 2 * master * P
        if layout == "DDP":
            parts["DDP gradient buckets"] = master * P  # gradient_as_bucket_view off: a copy of every gradient
    elif layout == "ZeRO-2":  # ZeRO paper: bf16 weights whole, bf16 gradients and 12 B of fp32 states sharded
        parts["weights"] = 2 * P + 4 * P // n
        parts["gradients"] = 2 * P // n
        parts["optimizer (AdamW)"] = 8 * P // n
    elif layout == "ZeRO-3 offload":  # bf16 weight shards on the GPU; in host memory (DeepSpeed's stage 3 puts its
        parts["weights"] = 2 * P // n  # gradient partitions on the offload device): fp32 masters, AdamW moments and
        parts["gradients"] = 0  # fp32 gradients, stepped by DeepSpeedCPUAdam, and the bf16 gradient partitions
        plan.host_per_node = (4 + 8 + 4 + 2) * P // n * t.parallel.gpus_per_node
    else:  # ZeRO-3, FSDP2: everything sharded
        parts["weights"] = 4 * P // n + (2 * P // n if layout == "ZeRO-3" else 0)
        parts["gradients"] = (2 if layout == "ZeRO-3" else 4) * P // n
        parts["optimizer (AdamW)"] = 8 * P // n
    if layout.startswith("ZeRO"):
        parts["gradients"] += ZERO_REDUCE_BUCKET_BYTES
    if layout in SHARDED:  # two layers gathered in bf16 at a time (current + prefetched)
        gathered = 2 * counts.layer_params * 2 * 2  # weights and their gradients, two layers
        if layout == "FSDP2":  # the root unit (embeddings, final norm, head) stays gathered through the step
            gathered += 2 * (P - counts.layer_params * shape.layers)
            if precision != "float32":  # one layer's gradients cast to float32 for the reduce-scatter's input
                gathered += 4 * counts.layer_params  # (distributed.reduce_gradients_in_float32)
        parts["gathered layers (bf16)"] = gathered

    gkd = t.distill_method == "gkd"
    if teacher_config is not None:  # bf16 when training in bf16 (gkd.teacher_dtype); ZeRO-3 shards it
        teacher = count_model(teacher_config)
        dtype_bytes = 4 if precision == "float32" else 2
        if layout in ("ZeRO-3", "ZeRO-3 offload"):  # its own layers gathered two at a time, as the student's
            parts["GKD teacher weights"] = dtype_bytes * teacher.params // n + 2 * 2 * teacher.layer_params
        else:
            parts["GKD teacher weights"] = dtype_bytes * teacher.params

    per_layer = layer_bytes_per_token(shape, precision, liger)
    if lora.enabled:
        per_layer += adapter_bytes_per_token(counts, lora)
    resid = 2 if precision == "bfloat16" else 4
    if t.checkpointing(on_gpu=True):  # a plan is for GPUs
        parts["activations (checkpoints)"] = shape.layers * tokens * shape.hidden * resid
        parts["activations (one layer)"] = per_layer * tokens
    else:
        parts["activations"] = shape.layers * per_layer * tokens
    if gkd:  # the student is resized to the teacher's vocabulary (gkd.match_vocab)
        vocab = Shape.of(teacher_config).vocab if teacher_config is not None else shape.vocab
        parts["GKD logits + JSD loss"] = gkd_loss_bytes(tokens, vocab, precision, layout, t.gkd.beta)
    elif not liger:  # float32 logits kept by the loss, their gradient, and (bf16) the returned logits + gradient
        parts["logits (float32 + backward)"] = tokens * shape.vocab * (8 if precision == "float32" else 12)
    return plan


def suggestions(student: StudentConfig, plan: MemoryPlan, gpu_bytes: int) -> str:
    """What to change, in recipe keys, for a plan that does not fit: for the states (shard them, more GPUs, LoRA)
    and/or for the activations (checkpointing, Liger, a smaller micro-batch, splitting the sequence), whichever
    is the larger part."""
    t, p = student.train, student.train.parallel
    activations = plan.total - plan.states
    tips = []
    if activations >= plan.states / 2:
        if not t.checkpointing(on_gpu=True):
            tips.append("train.gradient_checkpointing=true")
        if not t.use_liger_kernel and t.distill_method != "gkd":
            tips.append("train.use_liger_kernel=true (fused cross-entropy: no logits kept)")
        if t.per_device_train_batch_size > 1:
            tips.append("a smaller train.per_device_train_batch_size (global_batch_size keeps the batch)")
        if t.distill_method != "gkd":  # TRL's GKD samples and scores whole sequences: no SP/CP (config.py)
            if plan.layout == "FSDP2":
                tips.append(f"train.parallel.context_parallel_size={2 * p.context_parallel_size} (ring attention)")
            elif plan.layout.startswith("ZeRO"):  # a size the heads and the processes split into (Ulysses')
                larger = [sp for sp in plan.ulysses_sizes if sp > p.sequence_parallel_size]
                if larger:
                    tips.append(f"train.parallel.sequence_parallel_size={larger[0]} (Ulysses)")
        tips.append(f"a shorter train.max_length (now {t.max_length})")
    if plan.states >= activations / 2 or not tips:
        if plan.layout in ("one GPU", "DDP", "ZeRO-2", "FSDP2") and "GKD teacher weights" in plan.parts:
            tips.append("shard the GKD teacher too: train.parallel.accelerate_config=configs/accelerate/zero3.yaml")
        elif plan.layout in ("one GPU", "DDP", "ZeRO-2") and not student.lora.enabled:
            tips.append("shard the weights too: train.parallel.accelerate_config=configs/accelerate/zero3.yaml")
        elif plan.layout in SHARDED:
            sharded = sum(plan.parts.get(k, 0) for k in ("weights", "gradients", "optimizer (AdamW)"))
            room = HEADROOM * gpu_bytes - (plan.total - sharded)
            if room > 0:
                processes = math.ceil(plan.processes * sharded / room)
                tips.append(f"more GPUs to shard over: train.parallel.nodes="
                            f"{math.ceil(processes / p.gpus_per_node)} (x {p.gpus_per_node} GPUs)")
        if plan.layout == "ZeRO-3":
            tips.append("the optimizer in host memory: train.parallel.accelerate_config="
                        "configs/accelerate/zero3_offload.yaml")
        if not student.lora.enabled:
            tips.append("LoRA/QLoRA (lora.enabled, lora.quantization=nf4)")
    return "; ".join(tips)


def preflight(student: StudentConfig, config: Any, gpu_bytes: int | None = None,
              teacher: str | None = None) -> tuple[MemoryPlan | None, str | None]:
    """Plan this launch (as accelerate set it up) before the weights load: (plan, warning); (None, None) without a
    GPU. Refuse where the states alone exceed the GPU (certain out-of-memory, whatever the data; a GKD teacher's
    weights count among them, ``teacher`` being the run's when train.gkd.teacher is unset); warn where the whole
    step is planned above ``HEADROOM`` (activations are an estimate, and a run of short traces may pass)."""
    from .distributed import check_ulysses_heads, deepspeed_zero_setup, launcher_kind, world_size

    check_ulysses_heads(student.train.parallel, config)  # on any machine: DeepSpeed refuses it after the load
    gpu_bytes = gpu_memory_bytes() if gpu_bytes is None else gpu_bytes
    if not gpu_bytes:
        return None, None
    stage, offload = deepspeed_zero_setup()
    layout, processes = layout_of(student, world=world_size(), launcher=launcher_kind(), zero_stage=stage,
                                  offload=offload)
    plan = plan_memory(student, config, layout=layout, processes=processes,
                       teacher_config=gkd_teacher_config(student, teacher))
    if plan.states > gpu_bytes:
        raise DistillError(f"the weights, gradients and optimizer alone need {plan.states / GiB:.1f} GiB per GPU "
                           f"({layout} over {processes} process(es)) and this GPU has {gpu_bytes / GiB:.0f} GiB: "
                           f"{suggestions(student, plan, gpu_bytes)}. `distill student plan` prints the breakdown",
                           where="student.train.parallel")
    if not plan.fits(gpu_bytes):
        return plan, (f"planned {plan.total / GiB:.1f} GiB per GPU at {plan.tokens} tokens ({layout}, "
                      f"{processes} process(es)) on a {gpu_bytes / GiB:.0f} GiB GPU: a long trace will likely run "
                      f"out of memory; consider {suggestions(student, plan, gpu_bytes)}")
    return plan, None


def base_config(student: StudentConfig) -> Any:
    """The student's architecture config, with the recipe's overrides: the base's own config.json where it can be
    read here (a local folder, the Hugging Face cache), else the bundled fields of a known base (known_bases), else
    the Hub; a student built from ``init_config`` needs its vocabulary size there."""
    from .model import ARCHITECTURES, apply_config_overrides

    if student.base:
        config = model_config(student.base, "the base model's config")
    elif student.init_config:
        if "vocab_size" not in student.init_config:
            raise DistillError("a student built from init_config takes its vocabulary from the run's teacher: set "
                               "init_config.vocab_size to plan it", where=f"student '{student.name}'")
        config = ARCHITECTURES[student.architecture][0](**student.init_config)
    else:
        raise DistillError("a student needs 'base' (model id or path) or 'init_config'",
                           where=f"student '{student.name}'")
    return apply_config_overrides(config, student)


def model_config(ref: str, what: str = "the model's config") -> Any:
    """A model's config.json: a local folder's or the Hugging Face cache's, else the bundled fields of a known model
    (known_bases), else the Hub's. A folder without a readable config.json is one error naming it (``what``: which
    model it is, for the message)."""
    from transformers import AutoConfig

    from ..catalog import model_ref
    from ..hub_access import cached, loadable_ref
    from .known_bases import known_config
    from .model import load_errors

    ref = model_ref(ref)
    with load_errors(ref, what, "config"):
        if Path(ref).exists() or cached(ref):
            return AutoConfig.from_pretrained(ref, local_files_only=not Path(ref).exists())
        return known_config(ref) or AutoConfig.from_pretrained(loadable_ref(ref))


def peak_gpu_gib() -> float | None:
    """This process's peak GPU allocation so far (torch's max_memory_allocated), in GiB; None without CUDA. Kept in
    the run's metrics beside the plan (settings.planned_gib_per_gpu), so every GPU run shows how close it came."""
    import torch

    return round(torch.cuda.max_memory_allocated() / GiB, 2) if torch.cuda.is_available() else None


def gpu_memory_bytes() -> int | None:
    """Total memory of this process's GPU, or None on a machine without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", "0"))).total_memory
