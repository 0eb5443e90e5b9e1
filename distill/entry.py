"""What every entry point does before and around its work: the `distill` CLI (distill/cli.py) and the training
launcher that accelerate/torchrun start on each rank (distill/student/launch.py).

Why one module: the two used to keep their own copies (library environment defaults, error handling), and the
launcher's had drifted: it printed the libraries' progress bars, and a full traceback from every rank for any
error that was not a DistillError.

Under a multi-process launch (accelerate launch / torchrun, one process per GPU) every rank runs the same code, so a
bad ``--set`` or a bf16-on-CPU warning used to be printed by every rank: 8 identical lines on 8 GPUs. What we print
there goes through print_once: the first rank on a node to print a given line prints it, the others skip it, and a
line only one rank hits (its checkpoint shard is damaged) is still printed by that rank.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, TextIO

from .errors import DistillError

# Our own progress lines say what matters; the libraries' per-file loading bars and advisories only add noise.
LIBRARY_ENV_DEFAULTS = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_TELEMETRY": "1",
                        "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                        "TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


def set_library_env_defaults() -> None:
    """Set LIBRARY_ENV_DEFAULTS where the user has not: call before any of those libraries is imported."""
    for key, value in LIBRARY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


# Where print_once keeps its markers (one folder per launch); default: tempfile.gettempdir(). The tests point it at
# their tmp_path.
MARKER_DIR_ENV = "DISTILL_LAUNCH_MARKERS"
MARKER_PREFIX = "distill-launch-"
STALE_MARKERS_S = 24 * 3600  # a launch's folder is removed by a later launch on the node once a day old


def launch_key() -> str | None:
    """What the processes of one multi-process launch on this node share and two launches do not, or None for a
    process not started by a launcher (the ``distill`` CLI, a one-process run).

    Under torchrun/accelerate launch each rank's TORCHELASTIC_ERROR_FILE lies in the agent's per-attempt folder
    (``/tmp/torchelastic_XXXX/RUNID_YYYY/attempt_N/LOCAL_RANK/error.json``, made by mkdtemp): the ranks of one
    launch share it, a later launch or a restarted attempt gets another. TORCHELASTIC_RUN_ID alone would not do:
    it is ``none`` for every launch without --rdzv_id. Other launchers (deepspeed, mpirun, srun per GPU) are told
    apart by the rendezvous address, the Slurm step and the parent process (pid and start time, the pid alone is
    reused)."""
    env = os.environ
    try:
        several = int(env.get("WORLD_SIZE") or "1") > 1
    except ValueError:
        several = False
    if not (several or env.get("TORCHELASTIC_RUN_ID")):
        return None
    error_file = env.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        return os.path.dirname(os.path.dirname(os.path.abspath(error_file)))
    parent = os.getppid()
    try:  # field 22 of /proc/PID/stat: the parent's start time (the fields after ")" start at field 3)
        started = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = ""
    names = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID",
             "SLURM_STEP_ID")
    return "|".join([env.get(name, "") for name in names] + [str(parent), started])


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:32]


def first_to_print(text: str) -> bool:
    """True if this process should print ``text``: always outside a launch; under one, only for the first process
    of this launch on this node to ask about that text.

    The claim is an empty marker file, created with O_CREAT|O_EXCL (atomic, so two ranks racing on the same line
    cannot both win) in a folder for this launch named from launch_key(). Where the marker cannot be written, it
    prints: the same line twice is better than a line never. The first rank to make a launch's folder removes
    folders left by launches more than a day old."""
    key = launch_key()
    if key is None:
        return True
    root = Path(os.environ.get(MARKER_DIR_ENV) or tempfile.gettempdir())
    folder = root / f"{MARKER_PREFIX}{_digest(key)}"
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        pass
    except OSError:
        return True
    else:
        _remove_stale_markers(root, keep=folder)
    try:
        os.close(os.open(folder / _digest(text), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    except OSError:
        return True
    return True


def _remove_stale_markers(root: Path, keep: Path) -> None:
    cutoff = time.time() - STALE_MARKERS_S
    for old in root.glob(f"{MARKER_PREFIX}*"):
        try:
            if old != keep and old.is_dir() and old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def print_once(text: str, file: TextIO | None = None) -> None:
    """Print ``text`` (without its final newline) to ``file`` (stderr) unless another process of this launch on this
    node already printed the same text (first_to_print)."""
    if first_to_print(text):
        print(text, file=file or sys.stderr)


def record_for_launcher(message: str) -> None:
    """Write ``message`` to this rank's TORCHELASTIC_ERROR_FILE, in the format torch's ErrorHandler writes, so the
    ChildFailedError summary the launcher prints when a rank fails shows it (``traceback : error: ...``) instead
    of ``error_file: <N/A>`` and a link about enabling tracebacks. Nothing outside torchrun/accelerate launch.

    Why not torch's ``@record``: it writes the file only for an exception that leaves the process, with the
    traceback as the message, and ours are caught to print one line."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    data = {"message": {"message": message, "extraInfo": {"timestamp": str(int(time.time()))}}}
    try:
        Path(path).write_text(json.dumps(data))
    except OSError:  # the launcher's folder is gone: the summary says <N/A>, the error line was printed anyway
        pass


def print_warnings_once() -> None:
    """Show each Python warning as one line, ``warning: <message>``, and each distinct message once.

    Why: Python's default shows the warning's source line under it and repeats a warning raised from several call
    sites (a bf16-on-CPU warning came 4 times, each followed by ``if not resolve_bf16(cfg.train.bf16):``). The
    format is also set for warnings a library routes through logging (logging.captureWarnings). Under a
    multi-process launch a warning every rank raises is shown once per node (first_to_print)."""
    seen: set[str] = set()

    def one_line(message, category, filename, lineno, line=None) -> str:  # noqa: ARG001 - warnings' signature
        from .manifest import redact

        return f"warning: {redact(' '.join(str(message).split()))}\n"

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = one_line(message, category, filename, lineno)
        if text in seen:
            return
        seen.add(text)
        if not first_to_print(text):
            return
        try:
            (file or sys.stderr).write(text)
        except (OSError, ValueError):  # a closed or broken stream: a warning is not worth a crash
            pass

    warnings.showwarning = show
    warnings.formatwarning = one_line


def run_reporting_errors(work: Callable[[], int | None]) -> int:
    """Run ``work`` and return its exit status. Bad input (DistillError) is one ``error:`` line and 2; Ctrl-C 130;
    anything else, a bug, one ``error: internal error`` line (the first line of its message) and 1, or the
    traceback when DISTILL_DEBUG is set. Secrets are redacted from what is printed.

    Under a multi-process launch each line is printed once per node however many ranks hit it (print_once), and
    recorded for the launcher's failure summary (record_for_launcher)."""
    from .manifest import redact

    try:
        return work() or 0
    except DistillError as exc:
        report_error(f"error: {redact(str(exc))}")
        return 2
    except KeyboardInterrupt:  # Ctrl-C reaches every rank
        print_once("interrupted; rerun the same command to resume")
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug, not bad input: one line, traceback on request
        if os.environ.get("DISTILL_DEBUG"):
            raise
        message = next((line.strip() for line in redact(str(exc)).splitlines() if line.strip()), "")
        report_error(f"error: internal error {exc.__class__.__name__}: {message[:500]} "
                     "(rerun with DISTILL_DEBUG=1 for the traceback)")
        return 1


def report_error(line: str) -> None:
    """Print an error line (once per launch and node) and record it for the launcher's failure summary."""
    print_once(line)
    record_for_launcher(line)
