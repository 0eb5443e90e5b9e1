"""Training curves reach TensorBoard and W&B (offline) with the values the run reports, and the loss PNG is written.

Why: people watch a days-long 32B run in TensorBoard or W&B, not in the log. Both trackers are installed by the
test extra; W&B runs in offline mode (no account, no network) and its transaction log is read back record by
record, so the test checks what W&B would upload, not just that a file appeared.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = 3


def _train(out: str, report_to: str) -> dict:
    import warnings

    warnings.simplefilter("ignore")
    from distill.student.miniature import tiny_student, write_kept
    from distill.student.model import build_student
    from distill.student.train import train_student
    from tests.tiny_models import build_tiny_teacher

    teacher = build_tiny_teacher(Path(out) / "teacher")
    kept = write_kept(Path(out) / "kept", 16)
    cfg = tiny_student(max_steps=STEPS, report_to=report_to)
    model, tok = build_student(cfg, str(teacher))
    return train_student(model, tok, cfg, kept, Path(out) / "student")


def test_tensorboard_gets_loss_learning_rate_and_tokens_per_second(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = _train(str(tmp_path), "tensorboard")
    assert metrics["settings"]["report_to"] == ["tensorboard"]
    events = EventAccumulator(str(tmp_path / "student" / "tensorboard"))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
    for (step, logged), (_, reported) in zip(scalars["train/loss"], metrics["loss_curve"]):
        assert abs(logged - reported) < 1e-5
    assert [round(v, 6) for _, v in scalars["train/learning_rate"]] == [3e-3] * STEPS
    assert all(v > 0 for _, v in scalars["train/train_tokens_per_second"])
    assert (tmp_path / "student" / "loss.png").stat().st_size > 1000


def wandb_records(path: Path) -> list:
    """The records of a W&B transaction log (``run-ID.wandb``): a 7-byte ``:W&B`` header, then LevelDB log blocks
    of 32 KiB whose chunks (7-byte header: crc32, length, type FULL/FIRST/MIDDLE/LAST) carry protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the tail of a block too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_run_lands_in_the_run_folder_with_the_curves(tmp_path):
    """In a subprocess: W&B reads its settings from the environment when it starts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from tests.test_student_logging import _train; "
            f"print('METRICS' + json.dumps(_train({str(tmp_path)!r}, 'wandb')))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout.split("METRICS", 1)[1].splitlines()[0])
    assert metrics["settings"]["report_to"] == ["wandb"]
    assert not (tmp_path / "wandb").exists()  # not in the current directory (wandb's default)
    logs = list((tmp_path / "student" / "wandb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1, logs
    records = wandb_records(logs[0])
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == "r1-distill" and run.display_name == "tiny"
    losses = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            item = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            if "train/loss" in item:
                losses.append((item["train/global_step"], item["train/loss"]))
    assert [s for s, _ in losses] == [1, 2, 3]
    for (_, logged), (_, reported) in zip(losses, metrics["loss_curve"]):
        assert abs(logged - reported) < 1e-5
