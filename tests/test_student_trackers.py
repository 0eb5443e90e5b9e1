"""A tracker that ``train.report_to`` names but that cannot log here is one error before the student is built, and
a W&B run resumes with its training.

Why: an explicit tracker that was not installed (tensorboard, wandb) or a wandb without an API key failed only once
the trainer started, after the student was built, as ``error: internal error ModuleNotFoundError`` /
``UsageError`` (exit 1). And a rerun after a crash resumed training from its checkpoint but started a second W&B
run, splitting one training's curves in two. "Not installed" is real here: a sitecustomize hides the packages
from Python's import system in the child process, as an environment without them would (find_spec says None,
the import raises ModuleNotFoundError), and W&B runs in offline mode (no account, no network).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distill.errors import DistillError
from distill.student.trackers import check_report_to, wandb_login_problem
from tests.conftest import ROOT, filtered_run

HIDE_MODULES = '''
import os, sys
HIDDEN = tuple(filter(None, os.environ.get("HIDE_MODULES", "").split(",")))


class Hide:
    """Wraps a meta path finder: the hidden packages are not found, as if they were not installed."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name in HIDDEN or name.startswith(tuple(h + "." for h in HIDDEN)):
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.finder, attr)


sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
'''

SMALL = ["--set", "student.train.max_steps=2", "--set", "student.train.threads=1"]


def child_env(tmp_path: Path, hide: str = "", **extra: str) -> dict[str, str]:
    """This checkout importable, no W&B settings or credentials of the machine's (HOME an empty folder)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("WANDB_") and k not in ("NETRC", "DISTILL_WANDB_RUN_ID", "RANK", "WORLD_SIZE")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    path = [str(ROOT)]
    if hide:
        blocker = tmp_path / "hide"
        blocker.mkdir(exist_ok=True)
        (blocker / "sitecustomize.py").write_text(HIDE_MODULES)
        path.insert(0, str(blocker))
    env.update(PYTHONPATH=os.pathsep.join(path), HIDE_MODULES=hide, HOME=str(home), OMP_NUM_THREADS="1",
               WANDB_SILENT="true", HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    env.update(extra)
    return env


def cli(tmp_path: Path, *args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=timeout)


# --- an explicit tracker that cannot log: one error, before the student is built ----------------------------------

@pytest.mark.parametrize("report_to, hide, says", [
    ("tensorboard", "tensorboard,tensorboardX", "asks for tensorboard, which is not installed (nor tensorboardX): "
                                                "pip install tensorboard, or leave tensorboard out of report_to"),
    ("[tensorboard,wandb]", "wandb", "asks for wandb, which is not installed: pip install wandb, or leave wandb out of "
                                   "report_to"),
    ("mlflow", "mlflow", "asks for mlflow, whose package is not installed here: pip install it, or leave mlflow out "
                         "of report_to"),
], ids=["tensorboard", "wandb", "mlflow"])
def test_an_explicit_tracker_that_is_not_installed_is_one_error_before_the_student_is_built(tmp_path, report_to, hide,
                                                                                            says):
    """Before: ``error: internal error ModuleNotFoundError: No module named 'tensorboardX'`` (exit 1) once the
    student was built and RUN/student/init written (tensorboard_callbacks fell back to tensorboardX); for wandb
    transformers' RuntimeError. ``distill student plan`` still works on such a machine (no tracker is used)."""
    run = filtered_run(tmp_path / "run")
    env = child_env(tmp_path, hide=hide, WANDB_MODE="offline")
    proc = cli(tmp_path, "student", "train", "tiny", "--out", str(run), "--set", f"student.train.report_to={report_to}",
               *SMALL, env=env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr == f"error: student.train.report_to: {says}\n", proc.stderr
    assert not (run / "student").exists()  # refused before the stage began: no untrained or trained model
    if hide == "wandb":
        plan = cli(tmp_path, "student", "plan", "r1-distill-qwen-1.5b", "--set", f"train.report_to={report_to}",
                   env=env)
        assert plan.returncode == 0 and "GiB" in plan.stdout, plan.stderr[-3000:]


def test_every_tracker_transformers_logs_to_is_checked():
    """The other trackers are checked with transformers' own availability functions: each named one exists, and no
    tracker transformers knows is left unchecked (a missing mlflow was a RuntimeError once the trainer was built)."""
    from transformers.integrations import integration_utils

    from distill.student.trackers import TRACKER_AVAILABLE

    assert set(TRACKER_AVAILABLE) | {"tensorboard", "wandb"} == set(integration_utils.INTEGRATION_TO_CALLBACK)
    assert all(callable(getattr(integration_utils, f)) for checks in TRACKER_AVAILABLE.values() for f in checks)


def test_wandb_without_an_api_key_is_one_error_before_the_student_is_built(tmp_path):
    """wandb installed, but no WANDB_API_KEY, no netrc entry (HOME empty) and not offline. Before: ``error: internal
    error UsageError: No API key configured. Use `wandb login` to log in.`` from inside the trainer. ``distill run``
    refuses before its first stage, not after the teacher has generated."""
    run = filtered_run(tmp_path / "run")
    netrc = tmp_path / "home" / ".netrc"
    says = ("error: student.train.report_to: asks for wandb, which has no API key here (no WANDB_API_KEY, no entry for "
            f"api.wandb.ai in {netrc}): run `wandb login`, set WANDB_API_KEY, or set WANDB_MODE=offline to log to the "
            "run folder only (upload later with `wandb sync`)\n")
    proc = cli(tmp_path, "student", "train", "tiny", "--out", str(run), "--set", "student.train.report_to=wandb",
               *SMALL, env=child_env(tmp_path))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr == says, proc.stderr
    assert not (run / "student").exists()
    fresh = tmp_path / "fresh"
    proc = cli(tmp_path, "run", "tiny", "--out", str(fresh), "--set", "student.train.report_to=wandb",
               env=child_env(tmp_path))
    assert (proc.returncode, proc.stderr) == (2, says)
    assert list(fresh.iterdir()) == []  # no prompts, no generations


def test_what_wandb_counts_as_logged_in(tmp_path, monkeypatch):
    """What wandb 0.31 itself consults (wbauth: the environment, the netrc file ``wandb login`` writes, its global
    settings file), read without touching the network."""
    home = tmp_path / "home"
    (home / ".config" / "wandb").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))  # ~ in the netrc and settings paths
    key = "k" * 40

    def problem(**env: str) -> str | None:
        return wandb_login_problem(env)

    assert "no entry for api.wandb.ai" in problem()
    assert "no entry for api.wandb.ai" in problem(WANDB_MODE="online")
    for mode in ("offline", "dryrun", "disabled"):
        assert problem(WANDB_MODE=mode) is None
    assert problem(WANDB_API_KEY=key) is None
    assert problem(WANDB_IDENTITY_TOKEN_FILE=str(tmp_path / "jwt")) is None
    # the netrc file `wandb login` writes, or the one NETRC names
    (home / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {key}\n")
    assert problem() is None
    assert problem(WANDB_BASE_URL="https://api.forge.coreweave.com") is None  # wandb 0.31's default address
    assert "no entry for wandb.example.org" in problem(WANDB_BASE_URL="https://wandb.example.org")
    (tmp_path / "other-netrc").write_text(f"machine wandb.example.org login user password {key}\n")
    assert problem(WANDB_BASE_URL="https://wandb.example.org", NETRC=str(tmp_path / "other-netrc")) is None
    assert problem(NETRC=str(tmp_path / "other-netrc")) is not None
    (home / ".netrc").write_text("machine api.wandb.ai login user password\n")  # an entry without a key
    assert problem() is not None
    (home / ".netrc").write_text("this is not netrc syntax \"\n")
    assert problem() is not None
    # wandb's global settings file (WANDB_CONFIG_DIR or ~/.config/wandb)
    (home / ".config" / "wandb" / "settings").write_text("[default]\nmode = offline\n")
    assert problem() is None
    assert problem(WANDB_MODE="online") is not None  # the environment wins, as in wandb
    config = tmp_path / "config"
    config.mkdir()
    (config / "settings").write_text(f"[default]\napi_key = {key}\n")
    assert problem(WANDB_MODE="online", WANDB_CONFIG_DIR=str(config)) is None


def test_only_explicit_trackers_are_checked_and_only_on_the_main_process(monkeypatch, tmp_path):
    """``auto`` picks what works (unchanged) and ``none`` uses nothing; other ranks never log to a tracker."""
    from distill.student import trackers

    monkeypatch.setattr(trackers, "installed", lambda module: False)  # nothing installed
    check_report_to("auto")
    check_report_to("none")
    assert trackers.resolve_report_to("auto") == []
    from transformers.integrations import integration_utils  # the other trackers: transformers' own checks

    monkeypatch.setattr(integration_utils, "is_mlflow_available", lambda: True)
    check_report_to("mlflow")
    monkeypatch.setattr(integration_utils, "is_mlflow_available", lambda: False)
    with pytest.raises(DistillError, match=r"^student\.train\.report_to: asks for mlflow, whose package is not "):
        check_report_to("mlflow")
    with pytest.raises(DistillError, match=r"^student\.train\.report_to: asks for tensorboard, which is not "
                                           r"installed .*; asks for wandb, which is not installed: pip install wandb"):
        check_report_to(["tensorboard", "wandb", "tensorboard"])
    monkeypatch.setenv("RANK", "1")
    check_report_to(["tensorboard", "wandb"])


def test_the_train_stage_and_the_launcher_refuse_before_the_student_is_built(tmp_path, monkeypatch, capsys):
    """Called directly (not through ``distill``'s preflight) as the multi-process launch calls them."""
    from distill.config import load_recipe
    from distill.pipeline import stage_train
    from distill.student import launch

    for key in [k for k in os.environ if k.startswith("WANDB_")] + ["NETRC", "RANK", "WORLD_SIZE"]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no netrc, no wandb settings
    run = filtered_run(tmp_path / "run")
    with pytest.raises(DistillError, match=r"^student\.train\.report_to: asks for wandb, which has no API key here"):
        stage_train(load_recipe("tiny", ["student.train.report_to=wandb", "student.train.max_steps=1"]), run)
    assert not (run / "student").exists()
    assert launch.main(["tiny", "--out", str(run), "--set", "student.train.report_to=wandb"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: student.train.report_to: asks for wandb, which has no API key here"), err
    assert not (run / "student" / "init").exists()


def test_a_tensorboard_that_does_not_import_is_one_error(monkeypatch, tmp_path):
    """Installed (found) but broken: was tensorboardX's ModuleNotFoundError from the fallback import."""
    from distill.student.miniature import tiny_student
    from distill.student.trackers import tensorboard_callbacks

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` raises ImportError
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(DistillError, match=r"^student\.train\.report_to: tensorboard does not import \(.*\), nor "
                                           r"does tensorboardX: pip install tensorboard"):
        tensorboard_callbacks(tiny_student(report_to="tensorboard"), tmp_path)


# --- W&B resumes with the training ---------------------------------------------------------------------------------

@pytest.fixture
def wandb_env(monkeypatch):
    """wandb_defaults sets these in os.environ: put them back after the test."""
    for key in ("WANDB_PROJECT", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME", "DISTILL_WANDB_RUN_ID", "RANK"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_a_run_folder_keeps_one_wandb_run_id(tmp_path, wandb_env):
    from distill.student.trackers import wandb_defaults

    wandb_defaults(tmp_path / "student")
    first = (tmp_path / "student" / "wandb" / "run_id").read_text().strip()
    assert os.environ["WANDB_RUN_ID"] == first and os.environ["WANDB_RESUME"] == "allow"
    assert os.environ["WANDB_DIR"] == str(tmp_path / "student" / "wandb")
    wandb_defaults(tmp_path / "student-unfiltered")  # the ablation, in the same process: its own id
    second = (tmp_path / "student-unfiltered" / "wandb" / "run_id").read_text().strip()
    assert second != first and os.environ["WANDB_RUN_ID"] == second
    wandb_defaults(tmp_path / "student")  # a rerun: the same id again
    assert os.environ["WANDB_RUN_ID"] == first == (tmp_path / "student" / "wandb" / "run_id").read_text().strip()
    assert sorted(p.name for p in (tmp_path / "student" / "wandb").iterdir()) == ["run_id"]  # no temporary left

    wandb_defaults(tmp_path / "student", resumes=False)  # a rerun from step 0 (no checkpoint): a new W&B run
    third = (tmp_path / "student" / "wandb" / "run_id").read_text().strip()
    assert third not in (first, second) and os.environ["WANDB_RUN_ID"] == third

    (tmp_path / "student" / "wandb" / "run_id").write_text("a/b\n")
    with pytest.raises(DistillError, match=r"run_id: not a W&B run id \('a/b'\); delete the file"):
        wandb_defaults(tmp_path / "student")


def test_the_wandb_run_resumes_exactly_when_training_does(tmp_path, wandb_env):
    """training_args tells wandb_defaults whether a complete checkpoint is there to resume: a crash before the first
    save (or one whose only checkpoint was cut short) restarts at step 0 and gets a new W&B run; a crash after it
    resumes the checkpoint and the W&B run."""
    from distill.student.miniature import tiny_student
    from distill.student.train import training_args
    from tests.tiny_models import build_tiny_tokenizer

    cfg, tok = tiny_student(report_to="wandb"), build_tiny_tokenizer(tmp_path / "tok")
    out = tmp_path / "student"
    training_args(cfg, out, tok)
    first = os.environ["WANDB_RUN_ID"]
    cut_short = out / "checkpoints" / "checkpoint-4"
    cut_short.mkdir(parents=True)
    (cut_short / "trainer_state.json").write_text('{"global_step": 4, "log_hi')
    training_args(cfg, out, tok)
    second = os.environ["WANDB_RUN_ID"]
    assert second != first
    (cut_short / "trainer_state.json").write_text('{"global_step": 4}')
    training_args(cfg, out, tok)
    assert os.environ["WANDB_RUN_ID"] == second == (out / "wandb" / "run_id").read_text().strip()


@pytest.mark.parametrize("users", [{"WANDB_RUN_ID": "mine"}, {"WANDB_RESUME": "never"}])
def test_the_users_own_wandb_run_id_or_resume_wins(tmp_path, wandb_env, users):
    from distill.student.trackers import wandb_defaults

    for key, value in users.items():
        wandb_env.setenv(key, value)
    wandb_defaults(tmp_path / "student")
    assert {k: os.environ.get(k) for k in ("WANDB_RUN_ID", "WANDB_RESUME")} == \
        {"WANDB_RUN_ID": None, "WANDB_RESUME": None, **users}
    assert not (tmp_path / "student" / "wandb" / "run_id").exists()


def test_only_the_main_process_writes_the_run_id(tmp_path, wandb_env):
    from distill.student.trackers import wandb_defaults

    wandb_env.setenv("RANK", "3")
    wandb_defaults(tmp_path / "student")
    assert "WANDB_RUN_ID" not in os.environ and not (tmp_path / "student" / "wandb" / "run_id").exists()


def wandb_history(run_folder: Path) -> list[int]:
    """The ``train/global_step`` of each loss W&B recorded in one offline run folder."""
    from tests.test_student_logging import wandb_records

    steps = []
    for log in run_folder.glob("run-*.wandb"):
        for r in wandb_records(log):
            if r.WhichOneof("record_type") == "history":
                item = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                if "train/loss" in item:
                    steps.append(item["train/global_step"])
    return steps


def test_a_rerun_after_a_crash_logs_into_the_same_wandb_run(tmp_path):
    """The real CLI, SIGKILLed (with its wandb process) once a checkpoint is complete, then run again: training
    resumes from the checkpoint and W&B from the run it had, not a second run."""
    run = filtered_run(tmp_path / "run", n=16)
    args = ["student", "train", "tiny", "--out", str(run), "--set", "student.train.report_to=wandb",
            "--set", "student.train.max_steps=48", "--set", "student.train.save_steps=4",
            "--set", "student.train.logging_steps=1", "--set", "student.train.per_device_train_batch_size=4",
            "--set", "student.train.threads=1"]
    env = child_env(tmp_path, WANDB_MODE="offline")
    folder = run / "student"
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not list((folder / "checkpoints").glob("checkpoint-*/trainer_state.json")):
            assert proc.poll() is None, "finished or failed before a checkpoint: " + proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "no checkpoint in time"
            time.sleep(0.02)
    finally:
        proc.kill()  # SIGKILL: the trainer dies mid-step; wandb's own process sees it gone, writes out and exits
        proc.wait()
        proc.stderr.close()
    time.sleep(1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything of that session still running
    assert not (folder / "manifest.json").exists() or json.loads((folder / "manifest.json").read_text())[
        "status"] != "complete"
    first = list((folder / "wandb" / "wandb").glob("offline-run-*"))
    assert len(first) == 1, first
    run_id = first[0].name.rsplit("-", 1)[1]

    again = cli(tmp_path, *args, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    sessions = sorted((folder / "wandb" / "wandb").glob("offline-run-*"))
    assert len(sessions) == 2 and {p.name.rsplit("-", 1)[1] for p in sessions} == {run_id}, sessions
    assert (folder / "wandb" / "run_id").read_text().strip() == run_id
    killed, resumed = (wandb_history(p) for p in sessions)
    assert killed[:1] in ([], [1])  # offline, wandb buffers its log: a SIGKILL may leave it empty
    assert resumed[0] > 1 and resumed == list(range(resumed[0], 49))  # the rerun went on from the checkpoint
    assert json.loads((folder / "manifest.json").read_text())["status"] == "complete"


def test_the_student_and_the_ablation_in_one_process_get_their_own_wandb_runs(tmp_path):
    """pipeline.stage_train_unfiltered trains in the process that trained the student. Before, transformers left
    the student's W&B run open and wandb kept the environment it started with: the ablation's curve went into the
    student's run (and its folder)."""
    code = f"""
import sys, warnings
warnings.simplefilter("ignore")
from pathlib import Path
from distill.student.miniature import tiny_student, write_kept
from distill.student.model import build_student
from distill.student.train import train_student
from tests.tiny_models import build_tiny_teacher
out = Path({str(tmp_path)!r})
teacher = str(build_tiny_teacher(out / "teacher"))
kept = write_kept(out / "kept", 8)
for name, steps in (("student", 2), ("student-unfiltered", 3)):
    cfg = tiny_student(max_steps=steps, report_to="wandb")
    model, tok = build_student(cfg, teacher)
    train_student(model, tok, cfg, kept, out / name)
"""
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(tmp_path, WANDB_MODE="offline"),
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids = {}
    for name, steps in (("student", [1, 2]), ("student-unfiltered", [1, 2, 3])):
        sessions = list((tmp_path / name / "wandb" / "wandb").glob("offline-run-*"))
        assert len(sessions) == 1, (name, sessions)
        ids[name] = sessions[0].name.rsplit("-", 1)[1]
        assert wandb_history(sessions[0]) == steps
        assert (tmp_path / name / "wandb" / "run_id").read_text().strip() == ids[name]
    assert ids["student"] != ids["student-unfiltered"]


def test_auto_picks_wandb_exactly_when_it_can_start(monkeypatch, tmp_path):
    """``auto`` follows wandb's own rules: a ``wandb login`` (netrc) is honoured, and WANDB_MODE=online without a
    key no longer picks a W&B that then fails in the trainer (before, only WANDB_API_KEY / WANDB_MODE counted)."""
    from distill.student import trackers

    for key in [k for k in os.environ if k.startswith("WANDB_")] + ["NETRC"]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(trackers, "installed", lambda module: module == "wandb")
    assert trackers.resolve_report_to("auto") == []
    monkeypatch.setenv("WANDB_MODE", "online")
    assert trackers.resolve_report_to("auto") == []
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert trackers.resolve_report_to("auto") == ["wandb"]
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / ".netrc").unlink()
    assert trackers.resolve_report_to("auto") == ["wandb"]
