"""What every entry point does before and around its work: the `distill` CLI (distill/cli.py) and the training
launcher that accelerate/torchrun start on each rank (distill/student/launch.py).

Why one module: the two used to keep their own copies (library environment defaults, error handling), and the
launcher's had drifted: it printed the libraries' progress bars, and a full traceback from every rank for any
error that was not a DistillError.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Callable

from .errors import DistillError

# Our own progress lines say what matters; the libraries' per-file loading bars and advisories only add noise.
LIBRARY_ENV_DEFAULTS = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_TELEMETRY": "1",
                        "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                        "TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


def set_library_env_defaults() -> None:
    """Set LIBRARY_ENV_DEFAULTS where the user has not: call before any of those libraries is imported."""
    for key, value in LIBRARY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def print_warnings_once() -> None:
    """Show each Python warning as one line, ``warning: <message>``, and each distinct message once.

    Why: Python's default shows the warning's source line under it and repeats a warning raised from several call
    sites (a bf16-on-CPU warning came 4 times, each followed by ``if not resolve_bf16(cfg.train.bf16):``). The
    format is also set for warnings a library routes through logging (logging.captureWarnings)."""
    seen: set[str] = set()

    def one_line(message, category, filename, lineno, line=None) -> str:  # noqa: ARG001 - warnings' signature
        from .manifest import redact

        return f"warning: {redact(' '.join(str(message).split()))}\n"

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = one_line(message, category, filename, lineno)
        if text in seen:
            return
        seen.add(text)
        try:
            (file or sys.stderr).write(text)
        except (OSError, ValueError):  # a closed or broken stream: a warning is not worth a crash
            pass

    warnings.showwarning = show
    warnings.formatwarning = one_line


def run_reporting_errors(work: Callable[[], int | None]) -> int:
    """Run ``work`` and return its exit status. Bad input (DistillError) is one ``error:`` line and 2; Ctrl-C 130;
    anything else, a bug, one ``error: internal error`` line (the first line of its message) and 1, or the
    traceback when DISTILL_DEBUG is set. Secrets are redacted from what is printed."""
    from .manifest import redact

    try:
        return work() or 0
    except DistillError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug, not bad input: one line, traceback on request
        if os.environ.get("DISTILL_DEBUG"):
            raise
        message = next((line.strip() for line in redact(str(exc)).splitlines() if line.strip()), "")
        print(f"error: internal error {exc.__class__.__name__}: {message[:500]} "
              "(rerun with DISTILL_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
