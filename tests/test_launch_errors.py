"""What a multi-process launch prints when it fails: each error line once per node, not once per rank.

Why: under ``accelerate launch`` every rank runs the same code, so a bad ``--set`` was printed by every rank (8 times
on 8 GPUs) before torch's failure summary; a warning every rank raises (bf16 on a CPU) likewise. A line only one rank
hits (its checkpoint shard is damaged) must still be printed by that rank, so the ranks of one launch on a node
dedupe by the text of the line (distill/entry.py: first_to_print), not by rank. The Slurm template checks the recipe
before starting any node, and a bad one is one ``error:`` line there too.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from tests.conftest import free_port, worker_env

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_ENV = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_ERROR_FILE", "TORCHELASTIC_RESTART_COUNT", "WORLD_SIZE", "RANK",
              "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID", "SLURM_STEP_ID")


def _accelerate_launch(tmp_path: Path, *target: str) -> subprocess.CompletedProcess:
    """A real 2-process CPU launch (configs/accelerate/ddp.yaml cut to 2 processes, fp32, static rendezvous),
    with the markers kept in tmp_path."""
    from tests.test_student_sharded import cpu_variant

    config = cpu_variant("configs/accelerate/ddp.yaml", tmp_path / "ddp.yaml")
    env = worker_env(DISTILL_LAUNCH_MARKERS=str(tmp_path / "markers"))
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                           "--main_process_port", str(free_port()), *target],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


def _lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_a_bad_set_under_a_two_process_launch_is_one_error_line(tmp_path):
    proc = _accelerate_launch(tmp_path, "-m", "distill.student.launch", "tiny", "--out", str(tmp_path / "run"),
                              "--set", "student.train.max_length=10")
    assert proc.returncode != 0
    errors = _lines(proc.stderr, "error:")
    assert len(errors) == 1, proc.stderr[-4000:]
    assert "key 'train.max_length': Input should be greater than or equal to 16" in errors[0]
    # torch's failure summary shows the reason (each rank wrote TORCHELASTIC_ERROR_FILE), not a link about tracebacks
    assert "traceback : error: --set student.train.max_length=10" in proc.stderr, proc.stderr[-4000:]
    assert "error_file: <N/A>" not in proc.stderr
    assert len(list((tmp_path / "markers").iterdir())) == 1  # one folder for the launch


def test_a_line_only_one_rank_hits_is_still_printed(tmp_path):
    """Warnings every rank raises print once; a warning with the rank in it prints from each rank."""
    worker = tmp_path / "worker.py"
    worker.write_text(
        "import os, warnings\n"
        "from distill.entry import print_warnings_once, run_reporting_errors\n"
        "print_warnings_once()\n"
        "def work():\n"
        "    warnings.warn('every rank says this')\n"
        "    warnings.warn(f\"only rank {os.environ['RANK']} says this\")\n"
        "raise SystemExit(run_reporting_errors(work))\n")
    proc = _accelerate_launch(tmp_path, str(worker))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _lines(proc.stderr, "warning: every rank says this") == ["warning: every rank says this"]
    assert sorted(_lines(proc.stderr, "warning: only rank")) == ["warning: only rank 0 says this",
                                                                 "warning: only rank 1 says this"]


@pytest.fixture
def no_launch(monkeypatch, tmp_path):
    """No launcher variables inherited from wherever pytest runs; markers in tmp_path/markers."""
    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DISTILL_LAUNCH_MARKERS", str(tmp_path / "markers"))
    return tmp_path / "markers"


def _as_rank(monkeypatch, tmp_path: Path, launch: str, local_rank: int) -> Path:
    """The variables torchrun gives local rank ``local_rank`` of the launch whose log folder is ``launch``."""
    error_file = tmp_path / launch / "attempt_0" / str(local_rank) / "error.json"
    error_file.parent.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(local_rank))
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    return error_file


def test_print_once_dedupes_the_same_line_within_one_launch(no_launch, monkeypatch, tmp_path, capsys):
    from distill.entry import print_once

    _as_rank(monkeypatch, tmp_path, "launch_a", 0)
    print_once("error: same on every rank")
    print_once("error: only rank 0")
    _as_rank(monkeypatch, tmp_path, "launch_a", 1)
    print_once("error: same on every rank")
    print_once("error: only rank 1")
    assert capsys.readouterr().err.splitlines() == ["error: same on every rank", "error: only rank 0",
                                                    "error: only rank 1"]
    _as_rank(monkeypatch, tmp_path, "launch_b", 0)  # the next launch prints it again
    print_once("error: same on every rank")
    assert capsys.readouterr().err == "error: same on every rank\n"
    assert len(list(no_launch.iterdir())) == 2  # one small folder per launch
    assert all(path.stat().st_size == 0 for path in no_launch.rglob("*") if path.is_file())


def test_print_once_without_torchrun_error_files(no_launch, monkeypatch, capsys):
    """Another launcher (deepspeed, mpirun, srun per GPU): launches told apart by rendezvous address and parent."""
    from distill.entry import print_once

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    print_once("error: same")
    print_once("error: same")
    monkeypatch.setenv("MASTER_PORT", "29501")
    print_once("error: same")
    assert capsys.readouterr().err == "error: same\n" * 2


def test_outside_a_launch_every_line_prints(no_launch, capsys):
    from distill.entry import print_once

    print_once("error: same")
    print_once("error: same")
    assert capsys.readouterr().err == "error: same\n" * 2
    assert not no_launch.exists()


def test_run_reporting_errors_under_a_launch(no_launch, monkeypatch, tmp_path, capsys):
    """Bad input on both ranks: one line, exit 2 on each, and the error file torch's failure summary reads."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from distill.entry import run_reporting_errors
    from distill.errors import DistillError

    def bad_input():
        raise DistillError("Input should be greater than or equal to 16", where="key 'train.max_length'")

    def bug():
        raise ZeroDivisionError("division by zero")

    files = []
    for rank in (0, 1):
        files.append(_as_rank(monkeypatch, tmp_path, "launch", rank))
        assert run_reporting_errors(bad_input) == 2
        assert run_reporting_errors(bug) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: key 'train.max_length': Input should be greater than or equal to 16",
        "error: internal error ZeroDivisionError: division by zero (rerun with DISTILL_DEBUG=1 for the traceback)"]
    failures = {rank: ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=1, error_file=str(path))
                for rank, path in enumerate(files)}
    summary = ChildFailedError("distill.student.launch", failures).format_msg()
    assert summary.count("traceback : error: internal error ZeroDivisionError: division by zero") == 2
    assert "<N/A>" not in summary
    assert json.loads(files[0].read_text())["message"]["message"].startswith("error: internal error")


def test_warnings_under_a_launch(no_launch, monkeypatch, tmp_path, capsys):
    from distill.entry import print_warnings_once

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored after the test
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    for rank in (0, 1):
        _as_rank(monkeypatch, tmp_path, "launch", rank)
        print_warnings_once()  # each rank installs its own
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("bf16 on a CPU", stacklevel=1)
            warnings.warn(f"rank {rank}", stacklevel=1)
    assert capsys.readouterr().err.splitlines() == ["warning: bf16 on a CPU", "warning: rank 0", "warning: rank 1"]


def test_usage_errors_of_the_launcher_under_a_launch(no_launch, monkeypatch, tmp_path, capsys):
    from distill.student.launch import main

    for rank in (0, 1):
        _as_rank(monkeypatch, tmp_path, "launch", rank)
        with pytest.raises(SystemExit) as exit_:
            main(["tiny"])
        assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("error: the following arguments are required: --out") == 1 and err.startswith("usage:")


def test_stale_launch_folders_are_removed(no_launch, monkeypatch, tmp_path):
    from distill.entry import print_once

    old, recent = no_launch / "distill-launch-old", no_launch / "distill-launch-recent"
    for folder in (old, recent):
        folder.mkdir(parents=True)
        (folder / "marker").touch()
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    _as_rank(monkeypatch, tmp_path, "launch", 0)
    print_once("error: x")
    assert not old.exists() and recent.exists() and len(list(no_launch.iterdir())) == 2


SRUN_CALLED = """#!/bin/bash
touch "$CALLED_MARKER"
exit 97
"""


@pytest.mark.parametrize("args, expected", [
    (["nonexistent-recipe", "RUN"], "error: no entry named 'nonexistent-recipe' in the recipes/ catalog"),
    (["tiny", "RUN", "--set", "student.train.max_steps=abc"],
     "key 'train.max_steps': Input should be a valid integer"),
    (["tiny", "RUN", "configs/accelerate/missing.yaml"], "error: accelerate config configs/accelerate/missing.yaml "
                                                         "not found"),
])
def test_sbatch_script_rejects_a_bad_recipe_before_launching(tmp_path, args, expected):
    """As tests/test_slurm_launch.py runs the script, with ``srun``/``scontrol`` stand-ins that record being
    called: a bad recipe ends the job with one line and exit 2 before any node starts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("srun", "scontrol"):
        (bin_dir / name).write_text(SRUN_CALLED)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    env = worker_env(PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHON=sys.executable, SLURM_SUBMIT_DIR=str(tmp_path),
                     SLURM_NNODES="1", SLURM_GPUS_ON_NODE="1", SLURM_JOB_NODELIST="node0",
                     MASTER_PORT=str(free_port()), CALLED_MARKER=str(tmp_path / "called"))
    args = [str(tmp_path / "run") if a == "RUN" else a for a in args]
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "slurm_train.sbatch"), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(proc.stderr.splitlines()) == 1 and expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "called").exists() and not (tmp_path / "run").exists()
