"""The few facts about the process group that the training code needs, and accelerate's ParallelismConfig.

Why: the same ``train_student`` runs as one process (the CPU demo, one GPU) and as N processes under
``accelerate launch``/``torchrun`` (DDP, ZeRO, FSDP2, many nodes). A recipe states a *global* batch (what the
published recipes give: 128 for the open 7B reproduction, 96 for Sky-T1), and the per-process gradient
accumulation is derived from the world size at launch, so one recipe trains with the same optimisation on 8 or
64 GPUs. Sequence/context parallel groups see the same batch, so they do not count as data-parallel processes.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, ContextManager, Iterable, Iterator

from ..config import ParallelSettings, TrainConfig
from ..errors import DistillError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(parallel: ParallelSettings, visible: int | None = None, local_processes: int | None = None,
               world: int | None = None, mixed_precision: str | None = None) -> str | None:
    """Refuse a launch that asks for more GPUs than this node has, or whose processes do not split into the
    recipe's sequence/context-parallel groups; return a warning for a multi-GPU recipe run as one process. Checked
    before any weights load, so a 70B recipe fails in a second, not after loading.

    Why: more processes than GPUs on a node dies inside torch with "invalid device ordinal"; a recipe laid out for
    8 GPUs per node on 4 would run with twice the per-GPU shard and gradient accumulation and likely run out of
    memory hours in. Either is one clear error naming the key to change.

    With no GPU at all, several processes are legitimate only as CPU processes (the tests run the shipped configs
    that way, with ``mixed_precision: no``). A launch in bf16/fp16 (``mixed_precision`` of the accelerate config,
    exported by accelerate as ACCELERATE_MIXED_PRECISION) on a node without GPUs is a GPU config on the wrong
    machine: it used to start every process, load and tokenize, then fail on each rank with DeepSpeed's "bf16
    mismatch" traceback."""
    visible = visible_gpus() if visible is None else visible
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if local_processes is None else local_processes
    world = world_size() if world is None else world
    mixed_precision = (os.environ.get("ACCELERATE_MIXED_PRECISION", "no") if mixed_precision is None
                       else mixed_precision)
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = f"{visible} GPU{'s' if visible != 1 else ''} visible" + (f" (CUDA_VISIBLE_DEVICES={devices})"
                                                                    if devices is not None else "")
    if visible and local_processes > visible:
        raise DistillError(f"{local_processes} processes on this node but {seen}: launch one process per GPU "
                           f"(accelerate launch --num_processes {visible})", where="train.parallel")
    if not visible and local_processes > 1 and mixed_precision in ("bf16", "fp16"):
        raise DistillError(f"{local_processes} processes in {mixed_precision} (an accelerate config for GPUs) and "
                           f"this node has {seen}: run it on a GPU node, or for CPU processes set mixed_precision: "
                           "no in the accelerate config", where="accelerate launch")
    if parallel.gpus_per_node > max(visible, 1):
        raise DistillError(f"the recipe asks for {parallel.gpus_per_node} GPUs per node and this node has {seen}; "
                           f"to train on what is here, --set student.train.parallel.gpus_per_node={max(visible, 1)}"
                           " (the global batch is kept by more gradient accumulation; a big student may need LoRA)",
                           where="train.parallel.gpus_per_node")
    data_parallel_size(parallel, world)  # sequence/context groups must divide the processes launched
    check_long_context_launcher(parallel)  # Ulysses under DeepSpeed, ring attention under FSDP: before the load
    wanted = parallel.nodes * parallel.gpus_per_node
    if world == 1 and wanted > 1:
        return (f"the recipe is laid out for {parallel.nodes} node(s) x {parallel.gpus_per_node} GPUs and this is "
                f"one process on one GPU; launch it with accelerate launch --config_file "
                f"{parallel.accelerate_config or 'configs/accelerate/zero3.yaml'} -m distill.student.launch ...")
    return None


def data_parallel_size(parallel: ParallelSettings, world: int | None = None) -> int:
    world = world_size() if world is None else world
    model_parallel = parallel.sequence_parallel_size * parallel.context_parallel_size
    if world % model_parallel:
        keys = [k for k in ("sequence_parallel_size", "context_parallel_size") if getattr(parallel, k) > 1]
        raise DistillError(f"{world} process{'es' if world != 1 else ''} cannot be split into sequence/context-"
                           f"parallel groups of {model_parallel}: launch a multiple of {model_parallel} processes",
                           where=" and ".join(f"train.parallel.{k}" for k in keys))
    return world // model_parallel


def gradient_accumulation(t: TrainConfig, world: int | None = None) -> int:
    """``global_batch_size / (per_device x data-parallel processes)``; the recipe's own value if no global batch."""
    if t.global_batch_size is None:
        return t.gradient_accumulation_steps
    per_step = t.per_device_train_batch_size * data_parallel_size(t.parallel, world)
    if t.global_batch_size % per_step:
        raise DistillError(f"global_batch_size {t.global_batch_size} is not a multiple of per_device_train_batch_size"
                           f" x data-parallel processes = {per_step}", where="train.global_batch_size")
    return t.global_batch_size // per_step


def attention_heads(config: Any) -> tuple[int, int]:
    """(query heads, key/value heads) of a model config (its text part for a multimodal one)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return text.num_attention_heads, getattr(text, "num_key_value_heads", None) or text.num_attention_heads


def ulysses_sizes(config: Any, processes: int | None = None) -> list[int]:
    """The sequence_parallel_size values (2 and up) DeepSpeed Ulysses can split ``config``'s attention into: each
    GPU of a group takes an equal share of the query heads, and of the key/value heads (or, with fewer KV heads than
    GPUs, a replica of one); with ``processes``, only sizes that also divide them."""
    heads, kv = attention_heads(config)
    return [sp for sp in range(2, heads + 1) if heads % sp == 0 and (kv % sp == 0 or sp % kv == 0)
            and (processes is None or processes % sp == 0)]


def check_ulysses_heads(parallel: ParallelSettings, config: Any) -> None:
    """Refuse a ``sequence_parallel_size`` the student's attention heads cannot be split into, before any weights
    load.

    Why: DeepSpeed's UlyssesSPAttentionHF refuses it ("Attention head count 28 is not divisible by SP size 8") only
    when accelerate prepares the model, i.e. after every rank has loaded its weights (minutes for a 32B), and
    `distill student plan` planned it as if it would run: Qwen2.5-Math-7B's 28 heads (4 KV heads) take SP 2, 4 or 28,
    not 8; Qwen2.5-Math-1.5B's 12 heads (2 KV heads) not 8 either."""
    sp, sizes = parallel.sequence_parallel_size, ulysses_sizes(config)
    if sp == 1 or sp in sizes:
        return
    heads, kv = attention_heads(config)
    raise DistillError(f"sequence_parallel_size {sp}: DeepSpeed Ulysses splits the attention heads evenly over the "
                       f"GPUs of a group, and the student has {heads} query and {kv} key/value heads; it takes "
                       + (", ".join(map(str, sizes)) if sizes else "no sequence parallelism"),
                       where="train.parallel.sequence_parallel_size")


SP_ATTENTION = ("flash_attention_2", "flash_attention_3", "sdpa", "sdpa_varlen")
# the implementations that find a packed row's documents in the position ids Ulysses all-gathers
PACKED_SP_ATTENTION = ("flash_attention_2", "flash_attention_3", "sdpa_varlen")


def parallelism_config(parallel: ParallelSettings, attn_implementation: str = "flash_attention_2",
                       packed: bool = False) -> Any:
    """accelerate's ParallelismConfig for sequence (DeepSpeed Ulysses/ALST) or context (FSDP2 ring) parallelism;
    None when neither is used, so plain DDP/ZeRO/FSDP configs behave exactly as the accelerate YAML says.

    ``attn_implementation``: the model's (DeepSpeed refuses a different one). Ulysses drops the attention mask
    and hands the attention the all-gathered position ids: flash-attention and ``sdpa_varlen`` keep packed
    examples apart from those, plain SDPA cannot (one causal mask over the whole row), so ``packed`` with SDPA is
    refused; padded batches are fine with any of them."""
    if parallel.sequence_parallel_size == 1 and parallel.context_parallel_size == 1:
        return None
    from accelerate.parallelism_config import ParallelismConfig
    from accelerate.utils import DeepSpeedSequenceParallelConfig

    check_long_context_launcher(parallel)
    if parallel.sequence_parallel_size > 1:
        where = "train.parallel.sequence_parallel_size"
        if attn_implementation not in SP_ATTENTION:
            raise DistillError(f"sequence_parallel_size {parallel.sequence_parallel_size} with attention "
                               f"{attn_implementation}: DeepSpeed Ulysses supports {', '.join(SP_ATTENTION)}",
                               where=where)
        if packed and attn_implementation not in PACKED_SP_ATTENTION:
            raise DistillError(f"packing under sequence_parallel_size {parallel.sequence_parallel_size} with attention "
                               f"{attn_implementation}: packed examples would attend to each other (Ulysses drops "
                               f"the mask); use {' or '.join(PACKED_SP_ATTENTION)}", where=where)
        # accelerate checks the name against its own list, which predates registered implementations such as
        # sdpa_varlen; DeepSpeed looks the name up in transformers' registry itself, so it is set after the check
        handler = DeepSpeedSequenceParallelConfig(
            sp_seq_length_is_variable=True,
            sp_attn_implementation="sdpa" if attn_implementation == "sdpa_varlen" else attn_implementation)
        handler.sp_attn_implementation = attn_implementation
        # the data-parallel replicas beside the SP groups (ZeRO shards across them): accelerate sizes DeepSpeed's
        # train_batch_size from this, and DeepSpeed refuses to start when it leaves them out (2+ SP groups)
        return ParallelismConfig(sp_size=parallel.sequence_parallel_size, sp_backend="deepspeed", sp_handler=handler,
                                 dp_replicate_size=data_parallel_size(parallel))
    # FSDP2 shards over the data-parallel processes beside each ring (accelerate's dp_shard): accelerate refuses to
    # start when the sizes do not multiply to the world (left out, 32 GPUs with cp 2 stopped at 2 != 32)
    return ParallelismConfig(cp_size=parallel.context_parallel_size, cp_backend="torch",
                             dp_shard_size=data_parallel_size(parallel))


def check_long_context_launcher(parallel: ParallelSettings, launcher: str | None = None) -> None:
    """Refuse sequence parallelism outside a DeepSpeed launch and context parallelism outside an FSDP one;
    ``launcher``: deepspeed, fsdp or anything else (a plain launch), by default the running launch's.

    Why here: check_gpus calls it before any weights load. The same refusal in parallelism_config came only when
    the trainer's arguments were built, after every rank had loaded the student (a 32B recipe's SP 2 launched
    with fsdp2.yaml or ddp.yaml: minutes of loading, then this error). `distill student plan` calls it with the
    recipe's accelerate config's kind."""
    launcher = launcher or launcher_kind()
    if parallel.sequence_parallel_size > 1 and launcher != "deepspeed":
        raise DistillError(f"sequence_parallel_size {parallel.sequence_parallel_size} is DeepSpeed Ulysses: "
                           "launch with a DeepSpeed config (configs/accelerate/zero2.yaml or zero3.yaml), not "
                           f"{launcher}", where="train.parallel.sequence_parallel_size")
    if parallel.context_parallel_size > 1 and launcher != "fsdp":
        raise DistillError(f"context_parallel_size {parallel.context_parallel_size} is FSDP2 ring attention: launch "
                           f"with configs/accelerate/fsdp2.yaml, not {launcher}",
                           where="train.parallel.context_parallel_size")


def scaled_loss(result: Any, scale: Any, return_outputs: bool) -> Any:
    """A ``compute_loss`` result (the loss, or ``(loss, outputs)``) with its loss multiplied by ``scale``."""
    if return_outputs:
        loss, outputs = result
        return loss * scale, outputs
    return result * scale


def launcher_kind() -> str:
    """What ``accelerate launch`` set this process up for, from the variables it exports: ``deepspeed``,
    ``fsdp``, or ``a plain launch`` (DDP, torchrun, one process)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true"):
        return "deepspeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true"):
        return "fsdp"
    return "a plain launch"


def deepspeed_zero_setup() -> tuple[int | None, bool]:
    """(ZeRO stage, optimizer offloaded to host memory) as ``accelerate launch`` exported them; (None, False)
    outside a DeepSpeed launch."""
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    offload = os.environ.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none").lower() in ("cpu", "nvme")
    return (int(stage) if stage else None), offload


def reduce_gradients_in_float32(accelerator: Any) -> str | None:
    """Under FSDP2 with bf16/fp16 compute, make the gradient reduce-scatter run in float32; returns the reduce
    dtype an FSDP2 launch uses (None outside FSDP2).

    Why: accelerate's ``mixed_precision: bf16`` gives FSDP2 one dtype for everything, the gradient reduction too, so
    each gradient shard was the bf16 sum of every GPU's contribution (8 significant bits: over 64 GPUs the small
    terms of a sum are rounded away), before AdamW's float32 update. torchtitan reduces in float32 by default,
    as torch's FSDP2 documentation recommends; it doubles the reduce-scatter's bytes, not the all-gathers'.
    Called after the trainer is built and before it prepares the model, the one point the policy is read."""
    import dataclasses

    import torch
    from accelerate.utils import DistributedType

    state = accelerator.state
    plugin = getattr(state, "fsdp_plugin", None)
    if state.distributed_type != DistributedType.FSDP or plugin is None or plugin.fsdp_version != 2:
        return None
    policy = plugin.mixed_precision_policy
    if policy is None or policy.param_dtype in (None, torch.float32):
        return "float32"
    if policy.reduce_dtype != torch.float32:
        plugin.mixed_precision_policy = dataclasses.replace(policy, reduce_dtype=torch.float32)
    return "float32"


def receives_weights_from_main() -> bool:
    """True in every process but the main one of an FSDP launch with ``fsdp_cpu_ram_efficient_loading`` (the
    shipped fsdp2.yaml): such a process builds an empty student (model.empty_model) and is sent its shards by the
    main process when accelerate prepares the model (``fsdp2_load_full_state_dict``).

    Why here: transformers 5 reads the whole checkpoint in every process whatever FSDP_CPU_RAM_EFFICIENT_LOADING
    says (huggingface/transformers#43749), and accelerate then throws every copy but the main one away. In float32
    master weights that is 4 bytes per parameter in each process (benchmarks/bench_fsdp_loading.py): 8 x 283 GB
    of host memory on a node of the 70B recipe."""
    return (launcher_kind() == "fsdp" and world_size() > 1 and not is_main_process()
            and os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "false").lower() in ("1", "true"))


def pad_to_multiple_of(t: TrainConfig) -> int | None:
    """Batches are padded to the multiple their sequence split needs (``ParallelSettings.split_unit``: the SP size
    under Ulysses, 2 x the ring size under ring attention) unless the recipe pads to a coarser multiple of its own.

    Why for the ring: torch balances the load only when the length divides into a head and a tail chunk per GPU
    (its head-tail balancer is skipped otherwise, silently: the GPU holding the tail then does ~3x the other's
    attention at 2), and an odd length aborted the ring (measured: rank 1 SIGABRT on its first odd trace). A 32k
    trace has any length; padding at the end is harmless under the causal mask (pad tokens come last and carry no
    loss)."""
    split = t.parallel.split_unit()
    return t.pad_to_multiple_of or (split[0] if split else None)


def is_zero3_partitioned(model: Any) -> bool:
    """True when DeepSpeed ZeRO-3 built ``model`` already partitioned (its parameters carry a ``ds_id``): each
    process then holds a shard, and reading a weight needs a collective gather."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


@contextmanager
def gathered(params: Iterable[Any], modifier_rank: int | None = None) -> Iterator[None]:
    """The full values of ZeRO-3 partitioned ``params`` inside the block (``deepspeed.zero.GatheredParameters``);
    a no-op for ordinary tensors, so callers need no ZeRO-3 branch. Collective: under ZeRO-3 every process must
    enter it with the same parameters. ``modifier_rank``: the process whose in-block writes are kept (broadcast and
    re-partitioned on exit); None for a read-only gather, which skips that broadcast."""
    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield


def consolidated_state_dict(model: Any, is_main: bool,
                            gather: Callable[[list[Any]], ContextManager[Any]] = gathered) -> dict[str, Any]:
    """The full state dict of a ZeRO-3 partitioned model, on the main process (CPU copies); ``{}`` elsewhere.

    Why this way: before ``accelerator.prepare`` there is no DeepSpeed engine, so the engine's
    ``_zero3_consolidated_16bit_state_dict`` (what ``trainer.save_model`` uses under ``zero3_save_16bit_model``) is not
    available; this is the same walk. One module's own parameters are gathered at a time, so no process ever holds
    more than the largest layer in full (the embedding), while the main process collects CPU copies. Parameters are
    keyed by ``ds_id`` (by object for ordinary tensors), so tied weights (embed_tokens/lm_head) come out as one
    tensor under both names, which ``save_pretrained`` recognises and stores once. Every process must call this:
    each gather is collective. Buffers are not partitioned by ZeRO-3: the persistent ones are copied as they are,
    the non-persistent ones (RoPE's inverse frequencies) left out, as ``state_dict()`` does."""
    state: dict[str, Any] = {}
    seen: dict[Any, str] = {}

    def walk(module: Any, prefix: str) -> None:
        own = [p for _, p in module.named_parameters(recurse=False)]
        with gather(own):
            if is_main:
                for name, param in module.named_parameters(recurse=False):
                    key = getattr(param, "ds_id", id(param))
                    state[prefix + name] = (state[seen[key]] if key in seen
                                            else param.detach().to("cpu", copy=True))
                    seen.setdefault(key, prefix + name)
                for name, buf in module.named_buffers(recurse=False):
                    if buf is not None and name not in module._non_persistent_buffers_set:
                        state[prefix + name] = buf.detach().to("cpu", copy=True)
        for name, child in module.named_children():
            walk(child, f"{prefix}{name}.")

    walk(model, "")
    return state
