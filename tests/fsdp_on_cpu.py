"""``accelerate launch --config_file FSDP2.yaml -m tests.fsdp_on_cpu RECIPE --out RUN``: the train launcher
(distill.student.launch) under accelerate's FSDP2, on CPU processes. Where a script starts the workers itself
(scripts/slurm_train.sbatch), a ``sitecustomize.py`` holding ``import tests.fsdp_on_cpu`` on their PYTHONPATH
applies the same patch.

Why a shim: accelerate switches its FSDP plugin on only for accelerator device types (MULTI_GPU, MULTI_XPU, ...).
On CPU processes it stays MULTI_CPU, plain DDP, and the shipped fsdp2.yaml is silently ignored. torch's FSDP2
itself (``fully_shard``, DTensor shards, gloo collectives) runs on the CPU. This lifts that one gate the way
accelerate's own state does on GPUs: AcceleratorState records FSDP and shares it with PartialState (as accelerate
does at the end of its init), so sharding, cpu_ram_efficient_loading, the full-state-dict saves and FSDP
checkpoints run for real. Nothing is faked; only the device check is. Test-only: a CPU user has nothing to shard.
It also loads tests/ring_attention_on_cpu.py, so that the recipe's context parallelism (torch's ring attention,
registered for GPU kernels only) runs here too.
"""

from __future__ import annotations

import sys

from accelerate import state
from accelerate.utils import DistributedType

import tests.ring_attention_on_cpu  # noqa: F401

_init = state.AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, **kwargs) -> None:
    _init(self, *args, **kwargs)
    plugin = kwargs.get("fsdp_plugin")
    if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = plugin
        state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP


state.AcceleratorState.__init__ = _fsdp_on_cpu

if __name__ == "__main__":
    from distill.student.launch import main

    sys.exit(main(sys.argv[1:]))
