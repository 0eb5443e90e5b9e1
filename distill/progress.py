"""Progress bars for long stages: items done, tokens/s, ETA and money spent, on stderr."""

from __future__ import annotations

import logging
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class StageProgress:
    """A rich bar with a free-text field for rates (tokens/s, $ spent). Quiet when stderr is not a terminal
    except for a line every ``log_every`` seconds, so CI logs and `nohup` files stay readable."""

    def __init__(self, description: str, total: int, log_every: float = 10.0):
        self.description, self.total, self.done = description, total, 0
        self.tokens, self.cost = 0, 0.0
        self.start = self.last_log = time.time()
        self.log_every = log_every
        self.live = sys.stderr.isatty()
        self._progress = None
        if self.live:
            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                      console=console, transient=False)
            self._task = self._progress.add_task(description, total=total, rate="")

    def __enter__(self) -> "StageProgress":
        if self._progress:
            self._progress.start()
        return self

    def advance(self, items: int = 1, tokens: int = 0, cost: float | None = None) -> None:
        self.done += items
        self.tokens += tokens
        if cost is not None:
            self.cost = cost
        rate = self.rate_text()
        if self._progress:
            self._progress.update(self._task, advance=items, rate=rate)
        elif time.time() - self.last_log >= self.log_every or self.done >= self.total:
            self.last_log = time.time()
            console.print(f"{self.description}: {self.done}/{self.total} {rate}", highlight=False)

    def rate_text(self) -> str:
        elapsed = max(time.time() - self.start, 1e-6)
        parts = [f"{self.tokens / elapsed:,.0f} tok/s"]
        if self.done and self.total > self.done:
            parts.append(f"ETA {(self.total - self.done) * elapsed / self.done:,.0f}s")
        if self.cost:
            parts.append(f"${self.cost:,.4f}")
        return " ".join(parts)

    def __exit__(self, *exc: object) -> None:
        if self._progress:
            self._progress.stop()


def quiet_library_loggers() -> None:
    """Keep optional-backend chatter out of the run's output: bitsandbytes and liger-kernel report, at WARNING on
    every GPU run, backends they tried and do not need (liger's CuTe DSL and Ascend RoPE, seen on an H200)."""
    for name in ("bitsandbytes", "liger_kernel.backends"):
        logging.getLogger(name).setLevel(logging.ERROR)
