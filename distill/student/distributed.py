"""The few facts about the process group that the training code needs, and accelerate's ParallelismConfig.

Why: the same ``train_student`` runs as one process (the CPU demo, one GPU) and as N processes under
``accelerate launch``/``torchrun`` (DDP, ZeRO, FSDP2, many nodes). A recipe states a *global* batch (what the
published recipes give: 128 for the open 7B reproduction, 96 for Sky-T1), and the per-process gradient
accumulation is derived from the world size at launch, so one recipe trains with the same optimisation on 8 or
64 GPUs. Sequence/context parallel groups see the same batch, so they do not count as data-parallel processes.
"""

from __future__ import annotations

import os
from typing import Any

from ..config import ParallelSettings, TrainConfig
from ..errors import DistillError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def data_parallel_size(parallel: ParallelSettings, world: int | None = None) -> int:
    world = world_size() if world is None else world
    model_parallel = parallel.sequence_parallel_size * parallel.context_parallel_size
    if world % model_parallel:
        raise DistillError(f"{world} processes cannot be split into sequence/context-parallel groups of "
                           f"{model_parallel}", where="train.parallel")
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


def parallelism_config(parallel: ParallelSettings) -> Any:
    """accelerate's ParallelismConfig for sequence (DeepSpeed Ulysses/ALST) or context (FSDP2 ring) parallelism;
    None when neither is used, so plain DDP/ZeRO/FSDP configs behave exactly as the accelerate YAML says."""
    if parallel.sequence_parallel_size == 1 and parallel.context_parallel_size == 1:
        return None
    from accelerate.parallelism_config import ParallelismConfig
    from accelerate.utils import DeepSpeedSequenceParallelConfig

    if parallel.sequence_parallel_size > 1:
        return ParallelismConfig(sp_size=parallel.sequence_parallel_size, sp_backend="deepspeed",
                                 sp_handler=DeepSpeedSequenceParallelConfig(sp_seq_length_is_variable=True,
                                                                            sp_attn_implementation="flash_attention_2"))
    return ParallelismConfig(cp_size=parallel.context_parallel_size, cp_backend="torch")
