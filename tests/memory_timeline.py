"""Live CPU memory over a piece of work, from torch's memory profiler: what the GKD loss's memory test and
benchmarks/bench_gkd_loss_memory.py both measure.

Why a timeline: torch has no ``max_memory_allocated`` for the CPU, and the process's RSS counts the allocator's
caching too. The profiler records every tensor allocation and free, so the sum over its timeline is the bytes
of tensors alive at each moment: exact, and the same on every machine.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Callable


def live_bytes(work: Callable[[], object]) -> tuple[int, int]:
    """(bytes alive when ``work`` starts, the most alive while it runs), over CPU tensors."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        work()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # export_memory_timeline is deprecated in favour of CUDA-only snapshots
        prof.export_memory_timeline(f"{tmp}/timeline.json", device="cpu")
        _, sizes = json.loads(Path(f"{tmp}/timeline.json").read_text())
    live = [sum(categories) for categories in sizes]
    return live[0], max(live)
