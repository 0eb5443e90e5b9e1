"""The Ray launcher on a real local Ray cluster: one tiny-teacher engine per replica, shards resumed, then merged."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from distill.records import ShardedJsonlStore
from tests.conftest import run_cli

ARGS = ["--set", "data.train_size=24", "--set", "teacher.sampling.n=2", "--set", "teacher.batch_size=8"]


def test_replicas_resume_a_finished_shard_and_merge(tmp_path):
    out = tmp_path / "run"
    # Replica 0 already finished (as after a driver that was killed once one replica was done).
    first = run_cli("teacher", "generate", "tiny", "--out", str(out), "--shard", "0/2", *ARGS)
    assert first.returncode == 0, first.stderr
    part0 = list(ShardedJsonlStore(out / "generations-parts" / "0-of-2"))
    assert part0

    proc = run_cli("teacher", "generate", "tiny", "--out", str(out), "--replicas", "2", *ARGS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 replicas" in proc.stdout
    records = list(ShardedJsonlStore(out / "generations"))
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == 48
    assert set(Counter(r["prompt_id"] for r in records).values()) == {2}
    # The finished replica was reused, not regenerated; the other one ran in its own Ray worker.
    assert list(ShardedJsonlStore(out / "generations-parts" / "0-of-2")) == part0
    part1 = json.loads((out / "generations-parts" / "1-of-2" / "manifest.json").read_text())
    assert part1["status"] == "complete" and part1["inputs"]["shard"] == [1, 2]
    merged = json.loads((out / "generations" / "manifest.json").read_text())
    assert merged["counts"] == {"shards": 2, "samples_written": 48, "samples_total": 48}
    assert merged["tokens"]["completion_tokens"] == sum(r["completion_tokens"] for r in records)

    again = run_cli("teacher", "generate", "tiny", "--out", str(out), "--replicas", "2", *ARGS)
    assert again.returncode == 0 and len(list(ShardedJsonlStore(out / "generations"))) == 48


def test_replicas_and_shard_exclude_each_other(tmp_path):
    proc = run_cli("teacher", "generate", "tiny", "--out", str(tmp_path), "--replicas", "2", "--shard", "0/2")
    assert proc.returncode == 2 and "exclude each other" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_gpu_reservation_per_replica():
    from distill.errors import DistillError
    from distill.teacher.ray_launch import task_gpus

    assert task_gpus(8, [8.0, 8.0]) == 8        # TP=8 on one node: the task holds the node's 8 GPUs
    assert task_gpus(16, [8.0, 8.0]) == 0       # TP=8 x PP=2: vLLM's Ray executor places the workers
    assert task_gpus(0, [8.0]) == 0              # CPU teachers
    with pytest.raises(DistillError, match="needs 16 GPUs"):
        task_gpus(16, [8.0])
