"""Shared fixtures: one small end-to-end run of the real pipeline, reused by the tests that inspect its output."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_TEACHER = ROOT / "teachers" / "tiny-arith"

# A small slice of the demo recipe: enough to exercise every stage for real in about a minute.
SMALL_RUN = [
    "--set", "data.train_size=96",
    "--set", "teacher.sampling.n=2",
    "--set", "student.train.max_steps=150",
    "--set", "eval.benchmarks.0.limit=24",
    "--set", "eval.benchmarks.0.k=2",
    "--set", "compare_unfiltered=true",  # the filtering ablation: a second student on the unfiltered traces
]


@pytest.fixture(scope="session", autouse=True)
def launch_markers_in_a_test_folder(tmp_path_factory):
    """The multi-process launches the tests start keep their print-once markers (distill.entry.first_to_print) in
    a folder of this session, not in /tmp, where a later launch would clear them only after a day."""
    folder = tmp_path_factory.mktemp("launch-markers")
    previous = os.environ.get("DISTILL_LAUNCH_MARKERS")
    os.environ.setdefault("DISTILL_LAUNCH_MARKERS", str(folder))
    yield
    if previous is None:
        os.environ.pop("DISTILL_LAUNCH_MARKERS", None)


def free_port() -> int:
    """A loopback TCP port nothing listens on now (bound, then released): for the servers and rendezvous the
    tests start, or as an endpoint whose connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(**extra: str) -> dict[str, str]:
    """The environment of a multi-process child (torchrun, accelerate launch, a launch script): this checkout
    importable, one torch thread per process (two cores), no rank variables inherited from a surrounding launch,
    and faulthandler on, so a rank that dies of a signal says where (a rare abort is otherwise undiagnosable)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
           "PYTHONFAULTHANDLER": "1"}  # a rank killed by a signal (SIGABRT, SIGSEGV) prints its Python stack
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    env.update(extra)
    return env


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, check: bool = False):
    """Run the real CLI in a subprocess (as a user would), returning CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"CLI failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def sigkill_cli_when(args: list[str], store: Path, records: int, timeout: float = 240) -> None:
    """Start the real CLI, SIGKILL it as soon as ``store`` holds ``records`` records (a crash mid-stage)."""
    import signal
    import time

    from distill.records import ShardedJsonlStore

    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if ShardedJsonlStore(store).shards() and ShardedJsonlStore(store).count() >= records:
                break
            assert proc.poll() is None, "the stage finished before it could be killed; make it slower"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "tiny"
    run_cli("run", "tiny", "--out", str(out), *SMALL_RUN, check=True, timeout=900)
    return out


def filtered_run(run: Path, n: int = 4) -> Path:
    """A run folder whose filter stage is complete (what the train stage reads): ``n`` kept traces."""
    import json

    from distill.student.miniature import write_kept

    write_kept(run / "filtered" / "kept", n)
    (run / "filtered" / "manifest.json").write_text(json.dumps({"stage": "filter", "status": "complete"}))
    return run
