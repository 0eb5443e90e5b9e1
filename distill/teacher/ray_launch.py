"""Data-parallel generation over a Ray cluster: one teacher engine per replica, each on its own shard, then merge.

Why Ray: it is what vLLM already uses to span nodes, so a cluster that serves R1 with TP=8 x PP=2 has Ray running;
the same cluster runs N such replicas. Each replica is one Ray task that runs exactly what
``distill teacher generate --shard i/N`` runs (``pipeline.stage_generate``), so it inherits everything that stage
guarantees: a deterministic prompt split, fsync'd appends, exact resume and a spend ledger. A replica that dies
(a node lost, an OOM) is retried by Ray and resumes its own part; when all parts are complete the driver merges them
by id (``pipeline.stage_merge``). Killing the driver loses nothing either: rerun the same command.

Needs: every node sees the run folder at the same path (a shared file system, as Slurm/K8s clusters provide), and
the same environment (``pip install r1-distill[gpu]`` on every node). Resources per replica:
- vLLM: ``tensor_parallel_size x pipeline_parallel_size`` GPUs. When one replica spans nodes (PP across nodes)
  the task itself asks for no GPU and vLLM's Ray executor places the engine's workers (``gpus_per_replica=0``).
- transformers / OpenAI-compatible teachers: CPUs only (``cpus_per_replica``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..config import ResolvedRecipe
from ..errors import DistillError


def gpus_for(recipe: ResolvedRecipe) -> float:
    """GPUs one replica's engine needs (what the Ray task reserves)."""
    t = recipe.teacher
    if t.backend != "vllm":
        return 0.0
    return float(t.vllm.tensor_parallel_size * t.vllm.pipeline_parallel_size)


def task_gpus(engine_gpus: float, node_gpus: list[float]) -> float:
    """GPUs the replica's Ray task itself reserves.

    An engine that fits on one node reserves its GPUs with the task (Ray pins CUDA_VISIBLE_DEVICES for it). One
    that spans nodes (R1 at TP=8 x PP=2 on 8-GPU nodes) cannot be one task's reservation; the task then reserves
    none and vLLM's Ray executor places the engine's workers across nodes itself."""
    if engine_gpus <= 0:
        return 0.0
    largest = max(node_gpus, default=0.0)
    if engine_gpus > largest:
        if sum(node_gpus) < engine_gpus:
            raise DistillError(f"each replica needs {engine_gpus:g} GPUs (TP x PP) but the Ray cluster has "
                               f"{sum(node_gpus):g}")
        return 0.0
    return engine_gpus


def _replica(recipe: ResolvedRecipe, run: str, index: int, n: int, force: bool) -> dict[str, Any]:
    """Body of one Ray task: the sharded generate stage, with this replica's share of the node's CPUs."""
    from ..pipeline import stage_generate

    manifest = stage_generate(recipe, Path(run), force=force, shard=(index, n))
    return {"index": index, "host": os.uname().nodename, "seconds": manifest.get("seconds"),
            "samples": manifest.get("counts", {}).get("samples_total"), "reused": bool(manifest.get("reused"))}


def run_replicas(recipe: ResolvedRecipe, run: Path, replicas: int, *, address: str | None = None,
                 gpus_per_replica: float | None = None, cpus_per_replica: float = 1.0, max_retries: int = 3,
                 force: bool = False) -> dict[str, Any]:
    """Run ``replicas`` sharded generate stages as Ray tasks and merge them into ``RUN/generations``.

    ``address``: an existing cluster (``auto`` or ``ray://host:10001``); ``None`` starts a local one (one machine,
    several GPUs). Returns the merge stage's manifest plus a per-replica summary.
    """
    try:
        import ray
    except ImportError:
        raise DistillError("the Ray launcher needs ray: pip install 'ray[default]'") from None
    from ..pipeline import stage_merge, stage_prompts

    if replicas < 1:
        raise DistillError(f"--replicas must be at least 1, got {replicas}")
    run = Path(run).resolve()
    stage_prompts(recipe, run)
    if force:  # start over once, here: a replica retried by Ray must resume, not wipe its own progress again
        for folder in [run / "generations", *(run / "generations-parts" / f"{i}-of-{replicas}"
                                              for i in range(replicas))]:
            shutil.rmtree(folder, ignore_errors=True)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=True, configure_logging=False)
    try:
        node_gpus = [n.get("Resources", {}).get("GPU", 0.0) for n in ray.nodes() if n.get("Alive")]
        gpus = task_gpus(gpus_for(recipe), node_gpus) if gpus_per_replica is None else gpus_per_replica
        if gpus_for(recipe) and not gpus and recipe.teacher.vllm.distributed_executor_backend == "mp":
            raise DistillError("the engine spans nodes (TP x PP > GPUs per node): set "
                               "teacher.vllm.distributed_executor_backend=ray")
        task = ray.remote(_replica).options(num_cpus=cpus_per_replica, num_gpus=gpus, max_retries=max_retries,
                                            retry_exceptions=[OSError, ConnectionError])
        t0 = time.time()
        refs = [task.remote(recipe, str(run), i, replicas, False) for i in range(replicas)]
        summary: list[dict[str, Any]] = []
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    summary.append(ray.get(ref))
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, DistillError):
                        raise DistillError(str(cause)) from None
                    why = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc).splitlines()[-1]
                    raise DistillError(f"a replica failed ({why[:300]}); rerun the same command to resume every "
                                       "replica where it stopped") from None
                print(f"replica {summary[-1]['index']} of {replicas} on {summary[-1]['host']}: "
                      f"{summary[-1]['samples']} samples ({len(summary)}/{replicas} done, {time.time() - t0:.0f}s)",
                      flush=True)
    finally:
        if started_here:
            ray.shutdown()
    merged = stage_merge(recipe, run, replicas)
    return merged | {"replicas": sorted(summary, key=lambda s: s["index"])}
